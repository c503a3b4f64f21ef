//! The alert rules as Azure Monitor Prometheus rule groups. Azure Managed Prometheus does
//! not read PrometheusRule objects: its rules are Azure resources
//! (`Microsoft.AlertsManagement/prometheusRuleGroups`). This turns the one rules file the
//! chart, promtool and the lab use into an ARM template of those groups, so the two can
//! never drift (tests/tests/deploy.rs regenerates and compares).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// The rules file every other path uses.
pub const RULES: &str = "deploy/helm/tenantflow/files/tenantflow.rules.yaml";
/// The generated ARM template, committed.
pub const OUT: &str = "deploy/azure/tenantflow-rule-groups.json";

/// The ARM template for the rules file's text.
pub fn generate(rules_yaml: &str) -> Result<Value> {
    let rules: Value = serde_norway::from_str(rules_yaml).context("parsing the rules file")?;
    let groups = rules["groups"]
        .as_array()
        .context("the rules file has no `groups` list")?;
    let resources = groups.iter().map(group).collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "clusterName": {"type": "string", "metadata": {"description":
                "The AKS cluster's name: each group's rules see only this cluster's series (Azure adds the cluster filter)."}},
            "clusterResourceId": {"type": "string", "metadata": {"description":
                "The AKS cluster's resource ID (a scope of every group)."}},
            "azureMonitorWorkspaceResourceId": {"type": "string", "metadata": {"description":
                "The Azure Monitor workspace the cluster's Managed Prometheus writes to."}},
            "actionGroupResourceId": {"type": "string", "defaultValue": "", "metadata": {"description":
                "An action group to notify; empty: alerts fire without notification."}},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        },
        "resources": resources,
    }))
}

/// One rules-file group as one rule-group resource.
fn group(g: &Value) -> Result<Value> {
    let name = g["name"].as_str().context("a rule group without a name")?;
    let rules = g["rules"]
        .as_array()
        .with_context(|| format!("group {name} has no rules"))?
        .iter()
        .map(|r| rule(name, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "type": "Microsoft.AlertsManagement/prometheusRuleGroups",
        "apiVersion": "2023-03-01",
        "name": format!("[concat('{name}-', parameters('clusterName'))]"),
        "location": "[parameters('location')]",
        "properties": {
            "description": format!("tenantflow {name} (generated from {RULES} by cargo xtask rule-group)"),
            "scopes": ["[parameters('azureMonitorWorkspaceResourceId')]", "[parameters('clusterResourceId')]"],
            "clusterName": "[parameters('clusterName')]",
            "enabled": true,
            "interval": "PT1M",
            "rules": rules,
        },
    }))
}

fn rule(group: &str, r: &Value) -> Result<Value> {
    let expr = r["expr"]
        .as_str()
        .with_context(|| format!("a rule of group {group} has no expr"))?;
    let mut out = Map::new();
    if let Some(record) = r["record"].as_str() {
        out.insert("record".into(), literal(record));
    } else {
        let alert = r["alert"]
            .as_str()
            .with_context(|| format!("a rule of group {group} is neither alert nor record"))?;
        out.insert("alert".into(), literal(alert));
        let severity = r["labels"]["severity"].as_str().unwrap_or("warning");
        out.insert("severity".into(), json!(severity_number(alert, severity)?));
        if let Some(f) = r["for"].as_str() {
            out.insert("for".into(), json!(iso_duration(f)?));
        }
        out.insert(
            "actions".into(),
            json!("[if(empty(parameters('actionGroupResourceId')), createArray(), createArray(createObject('actionGroupId', parameters('actionGroupResourceId'))))]"),
        );
        out.insert(
            "resolveConfiguration".into(),
            json!({"autoResolved": true, "timeToResolve": "PT10M"}),
        );
    }
    out.insert("expression".into(), literal(expr));
    for key in ["labels", "annotations"] {
        if let Some(m) = r[key].as_object() {
            let m: Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), literal(v.as_str().unwrap_or_default())))
                .collect();
            out.insert(key.into(), Value::Object(m));
        }
    }
    out.insert("enabled".into(), json!(true));
    Ok(Value::Object(out))
}

/// ARM evaluates a string starting with `[` as a template expression; `[[` escapes it.
fn literal(s: &str) -> Value {
    if s.starts_with('[') {
        json!(format!("[{s}"))
    } else {
        json!(s)
    }
}

/// Azure's alert severities: 0 critical, 2 warning, 3 informational.
fn severity_number(alert: &str, s: &str) -> Result<u8> {
    Ok(match s {
        "critical" => 0,
        "warning" => 2,
        "info" => 3,
        other => bail!(
            "alert {alert}: severity {other:?} has no Azure severity (critical, warning, info)"
        ),
    })
}

/// Prometheus' `5m` as ISO 8601's `PT5M`.
fn iso_duration(d: &str) -> Result<String> {
    let secs = humantime::parse_duration(d)
        .with_context(|| format!("`for: {d}` is not a duration"))?
        .as_secs();
    Ok(match secs {
        s if s % 3600 == 0 => format!("PT{}H", s / 3600),
        s if s % 60 == 0 => format!("PT{}M", s / 60),
        s => format!("PT{s}S"),
    })
}

/// Regenerate [`OUT`] from [`RULES`] (run from the repository root).
pub fn write() -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(RULES).with_context(|| format!("reading {RULES}"))?;
    let json = serde_json::to_string_pretty(&generate(&text)?)? + "\n";
    let out = std::path::PathBuf::from(OUT);
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, json).with_context(|| format!("writing {OUT}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_escapes() {
        assert_eq!(iso_duration("5m").unwrap(), "PT5M");
        assert_eq!(iso_duration("1h").unwrap(), "PT1H");
        assert_eq!(iso_duration("90s").unwrap(), "PT90S");
        assert_eq!(literal("[x]"), json!("[[x]"));
        assert_eq!(literal("x[1]"), json!("x[1]"));
        assert!(severity_number("A", "page").is_err());
    }
}
