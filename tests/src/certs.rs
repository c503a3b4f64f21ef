//! Certificates for the lab's TLS listeners, made with openssl: a CA and a leaf for node 1's
//! addresses, loopback and the name the chart's certificate carries.

use std::process::Command;

/// A lab CA and the records listener's certificate from it, for node 1's addresses and the
/// name the chart's certificate carries. Returns (ca.crt, tls.crt, tls.key).
pub fn certificate(dir: &std::path::Path, lab: &crate::LabGuard) -> (String, String, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    let n = lab.topo.node(1);
    std::fs::write(
        dir.join("leaf.ext"),
        format!(
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:{},IP:{},IP:127.0.0.1,DNS:tenantflow-agent\n",
            n.pod_gw(),
            n.ip()
        ),
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=lab-ca",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.crt"),
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=tenantflow-agent",
                "-keyout",
                &p("tls.key"),
                "-out",
                &p("tls.csr"),
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &p("tls.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p("leaf.ext"),
            "-out",
            &p("tls.crt"),
        ],
    ] {
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (p("ca.crt"), p("tls.crt"), p("tls.key"))
}
