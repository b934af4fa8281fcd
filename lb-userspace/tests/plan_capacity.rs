//! `socklb plan --capacity`: whether a set of manifests fits in maps of given sizes,
//! the binary run on the demo manifests (no kernel needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn plan(args: &[&str]) -> (bool, String) {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo");
    let out = Command::new(env!("CARGO_BIN_EXE_socklb"))
        .args([
            "plan",
            "--manifests",
            demo,
            "--node",
            "socklb-demo",
            "--capacity",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_demo_fits_in_default_maps_and_not_in_tiny_ones() {
    let (ok, text) = plan(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("capacity: everything fits"), "{text}");

    let (ok, text) = plan(&["--map-size-services", "8"]);
    assert!(!ok, "too small maps must fail: {text}");
    assert!(text.contains("capacity: DOES NOT FIT"), "{text}");
    assert!(text.contains("not programmed: maps full"), "{text}");

    let (ok, json) = plan(&["--map-size-services", "8", "-o", "json"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["capacity"]["fits"], false);
    let unfit = v["capacity"]["not_programmed"].as_array().unwrap();
    assert!(!unfit.is_empty());
    assert!(unfit.iter().all(|u| u["reason"] == "maps_full"), "{json}");
    assert!(v["plan"]["frontends"].is_array());
}
