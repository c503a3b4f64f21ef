// Validates PodMonitor and PrometheusRule objects (JSON, one file each, as arguments)
// against the Prometheus Operator's CRD schemas (@kubernetes-models/prometheus-operator):
// types and required fields by the generated validators, and unknown fields, which the
// validators let through, against the fields the CRD types declare. Azure Managed
// Prometheus' azmonitoring.coreos.com kinds are the same CRDs in another API group.
// Prints "ok <kind> <name>" per object; exits 1 naming the first problem.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// ES modules ignore NODE_PATH: the package is loaded from there by path.
const types = join(process.env.NODE_PATH, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const { PodMonitor, PrometheusRule } = await import(pathToFileURL(join(types, "index.js")).href);

/** Field names a CRD type declares, with those of the types it extends. */
function fields(type) {
  const text = readFileSync(join(types, `${type}.d.ts`), "utf8");
  const own = [...text.matchAll(/^\s*"([A-Za-z0-9_]+)"\??:/gm)].map((m) => m[1]);
  const parents = [...text.matchAll(/extends IComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1(\w+)/g)]
    .map((m) => m[1]);
  return new Set([...own, ...parents.flatMap((p) => [...fields(p)])]);
}

function known(obj, type, path) {
  const allowed = fields(type);
  for (const key of Object.keys(obj)) {
    if (!allowed.has(key)) throw new Error(`${path}.${key}: unknown field of ${type}`);
  }
}

const kinds = { PodMonitor, PrometheusRule };
for (const file of process.argv.slice(2)) {
  const obj = JSON.parse(readFileSync(file, "utf8"));
  const name = `${obj.kind} ${obj.metadata?.name}`;
  try {
    const Kind = kinds[obj.kind];
    if (!Kind) throw new Error(`not a PodMonitor or PrometheusRule`);
    if (!["monitoring.coreos.com/v1", "azmonitoring.coreos.com/v1"].includes(obj.apiVersion)) {
      throw new Error(`apiVersion ${obj.apiVersion}`);
    }
    new Kind({ ...obj, apiVersion: "monitoring.coreos.com/v1" }).validate();
    if (obj.kind === "PodMonitor") {
      known(obj.spec, "PodMonitorSpec", "spec");
      obj.spec.podMetricsEndpoints.forEach((ep, i) => {
        const at = `spec.podMetricsEndpoints[${i}]`;
        known(ep, "PodMetricsEndpoint", at);
        (ep.relabelings ?? []).forEach((r, j) => known(r, "RelabelConfig", `${at}.relabelings[${j}]`));
        if (ep.tlsConfig) known(ep.tlsConfig, "SafeTLSConfig", `${at}.tlsConfig`);
        if (ep.authorization) known(ep.authorization, "SafeAuthorization", `${at}.authorization`);
      });
    } else {
      known(obj.spec, "PrometheusRuleSpec", "spec");
      obj.spec.groups.forEach((g, i) => {
        known(g, "RuleGroup", `spec.groups[${i}]`);
        g.rules.forEach((r, j) => known(r, "Rule", `spec.groups[${i}].rules[${j}]`));
      });
    }
    console.log(`ok ${name}`);
  } catch (e) {
    console.log(`${file}: ${name}: ${e.message}`);
    process.exit(1);
  }
}
