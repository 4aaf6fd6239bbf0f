//! Golden files for rendered text: `tests/golden/NAME` holds the expected
//! output; `UPDATE_GOLDEN=1 cargo test` rewrites them after a deliberate change.

use std::path::PathBuf;

pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert!(
        expected == actual,
        "{} differs from the rendered text (UPDATE_GOLDEN=1 rewrites it after a deliberate change):\n--- golden\n{expected}\n--- rendered\n{actual}",
        path.display()
    );
}
