#[test]
fn parses_v2_s() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/efficientnetv2_s.effnet"
    ))
    .unwrap();
    let f = effnet_grammar::parse(&src).unwrap();
    println!("{:#?}", f.items.len());
    assert_eq!(f.items.len(), 2);
    let e = effnet_grammar::parse("model a { stage fused k3 e1 s1 24 }").unwrap_err();
    println!("{e:?}");
}
