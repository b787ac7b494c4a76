//! README.md's embedding example is the crate docs' run-loop doctest, word for word, so
//! that the README never shows code that does not compile.

#[test]
fn the_readme_quotes_the_run_loop_doctest() {
    let lib = include_str!("../src/lib.rs");
    let readme = include_str!("../../README.md");

    let start = lib
        .find("//! The loop below drives")
        .expect("the run-loop doctest is in the crate docs");
    let mut doctest = Vec::new();
    let mut fence = 0;
    for line in lib[start..].lines() {
        let Some(text) = line.strip_prefix("//!") else {
            break;
        };
        let text = text.strip_prefix(' ').unwrap_or(text);
        if text.starts_with("```") {
            fence += 1;
            if fence == 2 {
                break;
            }
            continue;
        }
        // Hidden lines (`# ...`) and blank lines are not shown in the README.
        if fence == 1 && !text.is_empty() && !text.starts_with("# ") && text != "#" {
            doctest.push(text.to_owned());
        }
    }

    let begin = readme
        .find("<!-- porter-core doctest: begin -->")
        .expect("README.md marks the quoted doctest");
    let end = readme
        .find("<!-- porter-core doctest: end -->")
        .expect("README.md marks the end of the quoted doctest");
    let quoted: Vec<String> = readme[begin..end]
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("```") && !l.starts_with("<!--"))
        .map(str::to_owned)
        .collect();
    assert!(doctest.len() > 20, "found the doctest: {doctest:?}");
    assert_eq!(
        quoted, doctest,
        "README.md's embedding example differs from the doctest"
    );
}
