//! The gateway's WebTransport handshake under each browser family's dialect, checked by an
//! independent client (aioquic, `wt_dialects.py`): the SETTINGS it sends name WebTransport
//! in every draft's codepoint (Chromium and Firefox: `SETTINGS_ENABLE_WEBTRANSPORT`;
//! Safari, drafts 13–14: `SETTINGS_WT_MAX_SESSIONS`; drafts 15 on: `SETTINGS_WT_ENABLED`),
//! declare no session flow control, and a session opens and is welcomed under each.
//!
//! The client runs in the Python environment `scripts/test.sh` prepares (`.tools/python`,
//! with aioquic from the registry); `RTGATE_TEST_PYTHON` names another interpreter.

mod common;

use std::process::Command;

use common::*;

fn python() -> String {
    if let Ok(p) = std::env::var("RTGATE_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/python/bin/python3");
    assert!(
        std::path::Path::new(venv).exists(),
        "no Python environment with aioquic: run scripts/test.sh, or \
         python3 -m venv .tools/python && .tools/python/bin/pip install aioquic"
    );
    venv.to_string()
}

#[tokio::test]
async fn every_dialect_sees_webtransport_advertised_and_opens_a_session() {
    let t = TestGateway::start().await;
    let port = t.gw.wt_addr.port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wt_dialects.py");
    for dialect in ["chromium", "draft14", "draft15"] {
        let token = token("agent", 7, 1, &[]);
        let python = python();
        let port = port.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .args([script, dialect, "127.0.0.1", &port, &token])
                .output()
                .expect("the Python client runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "{dialect}: no report: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let settings = &report["settings"];
        for (id, value) in [
            ("0x8", 1),        // SETTINGS_ENABLE_CONNECT_PROTOCOL
            ("0x33", 1),       // SETTINGS_H3_DATAGRAM
            ("0x2b603742", 1), // SETTINGS_ENABLE_WEBTRANSPORT (draft 02–07)
            ("0x14e9cd29", 1), // SETTINGS_WT_MAX_SESSIONS (draft 13–14): one session
            ("0x2c7cf000", 1), // SETTINGS_WT_ENABLED (draft 15 on)
        ] {
            assert_eq!(settings[id], value, "{dialect}: setting {id} in {report}");
        }
        // No flow control declared: with one session, the drafts leave it off.
        for id in ["0x2b61", "0x2b64", "0x2b65"] {
            assert!(
                settings[id].is_null() || settings[id] == 0,
                "{dialect}: {id} in {report}"
            );
        }
        assert_eq!(report["status"], "200", "{dialect}: {report}");
        assert_eq!(report["welcome"], true, "{dialect}: {report}");
        assert!(output.status.success(), "{dialect}: {report}");
    }
}
