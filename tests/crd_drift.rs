//! The CRD under `crds/` is exactly what `dscc-token-operator crd` prints.

use std::process::Command;

#[test]
fn the_crd_file_matches_the_generated_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_dscc-token-operator"))
        .arg("crd")
        .output()
        .expect("run dscc-token-operator crd");
    assert!(output.status.success(), "crd command failed: {output:?}");
    let generated = String::from_utf8(output.stdout).expect("utf-8 CRD");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/dscc.io_dscccredentials.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("read crds/dscc.io_dscccredentials.yaml");
    assert!(
        generated == committed,
        "crds/dscc.io_dscccredentials.yaml is out of date: run \
         `cargo run -- crd > crds/dscc.io_dscccredentials.yaml` and commit it"
    );
}
