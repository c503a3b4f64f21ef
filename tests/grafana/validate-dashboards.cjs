// Validate Grafana dashboards against the official dashboard schema: the JSON schema is
// generated from @grafana/schema's `Dashboard` type (raw/dashboard/x) and applied with ajv,
// additional properties rejected. Usage: node validate-dashboards.cjs FILE...
// Modules come from NODE_PATH (cargo xtask setup installs them under /opt/tenantflow-tools).
const fs = require("fs");
const path = require("path");
const tsj = require("ts-json-schema-generator");
const Ajv = require("ajv");

const schemaPkg = path.dirname(require.resolve("@grafana/schema/package.json"));
const version = require("@grafana/schema/package.json").version;
const types = path.join(schemaPkg, "dist/types/raw/dashboard/x/types.gen.d.ts");
const schema = tsj
  .createGenerator({ path: types, type: "Dashboard", skipTypeCheck: true, additionalProperties: false })
  .createSchema("Dashboard");
const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile(schema);

let failed = 0;
for (const file of process.argv.slice(2)) {
  const dashboard = JSON.parse(fs.readFileSync(file, "utf8"));
  if (validate(dashboard)) {
    console.log(`ok ${file} (@grafana/schema ${version})`);
  } else {
    failed++;
    for (const e of validate.errors) {
      console.log(`FAIL ${file}: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
    }
  }
}
process.exit(failed ? 1 : 0);
