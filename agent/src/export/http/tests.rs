//! `/flows` query parsing (through axum's own extractor) and matching.

use axum::{extract::Query, http::Uri};

use super::*;
use crate::{net::PROTO_UDP, test_support::egress_view as egress};

fn query(q: &str) -> Result<FlowQuery, (StatusCode, String)> {
    let uri: Uri = format!("/flows{q}").parse().unwrap();
    parse_query("/flows", Query::try_from_uri(&uri))
}

#[test]
fn every_filter_matches_what_it_names_and_nothing_else() {
    let v = egress();
    let hits = |q: &str| query(q).unwrap().matches_connection(&v);
    for q in [
        "",
        "?namespace=alpha-web",
        "?tenant=alpha",
        "?class=pod_to_egress",
        "?egress=unmediated",
        "?cross_tenant=false",
        "?iface=veth10",
        "?proto=tcp",
        "?ip=10.244.1.10",
        "?ip=10.224.0.4",
        "?port=40001",
        "?port=443&ip=203.0.113.10&namespace=alpha-web",
    ] {
        assert!(hits(q), "{q} must match");
    }
    for q in [
        "?namespace=beta-api",
        "?tenant=beta",
        "?class=pod_to_pod",
        "?egress=mediated",
        "?cross_tenant=true",
        "?sensitive=any",
        "?iface=eth0",
        "?proto=udp",
        "?ip=10.224.0.5",
        "?port=40002",
        "?namespace=alpha-web&proto=udp",
    ] {
        assert!(!hits(q), "{q} must not match");
    }
}

#[test]
fn unknown_and_malformed_parameters_are_400_naming_what_is_accepted() {
    for q in [
        "?nmespace=x",
        "?port=http",
        "?ip=10.0.0",
        "?class=pod",
        "?cross_tenant=yes",
    ] {
        let (status, body) = query(q).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(body.starts_with("bad /flows query: "), "{q}: {body}");
        assert!(
            body.contains("accepted parameters: iface, proto"),
            "{q}: {body}"
        );
    }
}

#[test]
fn observations_take_only_tuple_filters() {
    let q = query("?ip=10.244.1.10&proto=udp").unwrap();
    assert!(!q.has_identity_filters());
    assert!(query("?tenant=alpha").unwrap().has_identity_filters());
    let f = FlowView {
        iface: "veth10".into(),
        ifindex: 4,
        role: Some("pod".into()),
        hook: "ingress".into(),
        proto: PROTO_UDP.into(),
        src: "10.244.1.10".parse().unwrap(),
        dst: "10.0.0.10".parse().unwrap(),
        src_port: 5000,
        dst_port: 53,
        packets: 1,
        bytes: 60,
        tcp_flags: 0,
        first_seen_ms: 0,
        last_seen_ms: 0,
    };
    assert!(q.matches(&f));
    assert!(!query("?port=54").unwrap().matches(&f));
}

proptest::proptest! {
    #![proptest_config(crate::fuzz_support::config())]
    /// Mutated `/flows` queries through axum's extractor and both matchers: a 400 or an
    /// answer, never a panic.
    #[test]
    fn fuzz_flows_query(q in crate::fuzz_support::mutated_text(&[
        "?namespace=alpha-web&tenant=alpha",
        "?port=443&ip=203.0.113.10&proto=tcp",
        "?class=pod_to_egress&egress=unmediated&cross_tenant=false&sensitive=any",
        "?iface=veth10&ip=fd00:244:1::10",
    ])) {
        let q: String = q.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
        let Ok(uri) = format!("/flows?{}", q.trim_start_matches('?')).parse::<Uri>() else {
            return Ok(());
        };
        if let Ok(fq) = parse_query("/flows", Query::try_from_uri(&uri)) {
            let _ = fq.matches_connection(&egress());
        }
    }
}

/// A large answer comes in pages in id order; each page names the next one's start.
#[test]
fn large_answers_are_paged_in_id_order() {
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let shared = Arc::new(Shared::new(crate::export::AgentMetrics::new("tcx", "none")));
        let app = records_router::<crate::access::KubeReview>(shared.clone(), None);
        let page = |q: &'static str| {
            let app = app.clone();
            async move {
                let req = axum::http::Request::get(format!("/flows{q}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = app.oneshot(req).await.unwrap();
                let next = resp
                    .headers()
                    .get(NEXT_AFTER)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let ids: Vec<u64> = serde_json::from_slice::<Vec<ConnectionView>>(&body)
                    .unwrap()
                    .iter()
                    .map(|c| c.id)
                    .collect();
                (ids, next)
            }
        };
        let views: Vec<Arc<ConnectionView>> = [5u64, 3, 1, 4, 2]
            .into_iter()
            .map(|id| {
                let mut v = egress();
                v.id = id;
                Arc::new(v)
            })
            .collect();
        // The first request finds no records yet and waits for the next publication.
        let (first, ()) = tokio::join!(page("?limit=2"), async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            shared.publish(views, vec![]);
        });
        assert_eq!(first, (vec![1, 2], Some("2".into())));
        assert_eq!(
            page("?limit=2&after=2").await,
            (vec![3, 4], Some("4".into()))
        );
        assert_eq!(page("?limit=2&after=4").await, (vec![5], None));
        assert_eq!(page("").await, (vec![1, 2, 3, 4, 5], None));
        assert_eq!(
            page("?limit=0").await,
            (vec![1], Some("1".into())),
            "at least one"
        );
    });
}
