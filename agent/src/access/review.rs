//! Asking the Kubernetes API who a bearer token belongs to (TokenReview) and whether that
//! user may read flow records (SubjectAccessReview on `get` of `flows.tenantflow.io`,
//! cluster-wide or in one namespace), the way the kubelet and kube-rbac-proxy do.

use std::{collections::BTreeMap, future::Future};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{api::PostParams, Api};

/// The API group and resource RBAC rules name to grant access to flow records.
pub const GROUP: &str = "tenantflow.io";
pub const RESOURCE: &str = "flows";

/// Who a token belongs to, as TokenReview says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API could not review the request: {0}")]
pub struct ReviewError(pub String);

/// The two questions; the agent asks the API, tests ask a stand-in.
pub trait Review: Send + Sync + 'static {
    /// None when the token is not valid (expired, revoked, unknown).
    fn authenticate(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<User>, ReviewError>> + Send;
    /// May `user` get flows in `namespace` (None: in every namespace)?
    fn authorize(
        &self,
        user: &User,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<bool, ReviewError>> + Send;
    /// May `user` get the non-resource URL `path` (e.g. /metrics, as Prometheus' role grants)?
    fn authorize_path(
        &self,
        user: &User,
        path: &str,
    ) -> impl Future<Output = Result<bool, ReviewError>> + Send;
}

/// The real API, through the agent's service account (which needs `create` on
/// tokenreviews and subjectaccessreviews: the chart grants it in exposed mode only).
pub struct KubeReview {
    client: kube::Client,
}

impl KubeReview {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Review for KubeReview {
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let out = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        let Some(status) = out.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let u = status.user.unwrap_or_default();
        Ok(Some(User {
            name: u.username.unwrap_or_default(),
            uid: u.uid,
            groups: u.groups.unwrap_or_default(),
            extra: u.extra.unwrap_or_default(),
        }))
    }

    async fn authorize(&self, user: &User, namespace: Option<&str>) -> Result<bool, ReviewError> {
        self.access(
            user,
            SubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    verb: Some("get".into()),
                    namespace: namespace.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
    }

    async fn authorize_path(&self, user: &User, path: &str) -> Result<bool, ReviewError> {
        self.access(
            user,
            SubjectAccessReviewSpec {
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
        )
        .await
    }
}

impl KubeReview {
    /// One SubjectAccessReview of `user` for what `spec` asks.
    async fn access(
        &self,
        user: &User,
        mut spec: SubjectAccessReviewSpec,
    ) -> Result<bool, ReviewError> {
        spec.user = Some(user.name.clone());
        spec.uid = user.uid.clone();
        spec.groups = Some(user.groups.clone());
        spec.extra = (!user.extra.is_empty()).then(|| user.extra.clone());
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let out = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        Ok(out.status.is_some_and(|s| s.allowed))
    }
}
