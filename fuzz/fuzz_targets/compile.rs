//! Parse, check, lower and analyse arbitrary bytes: nothing may panic, and whatever compiles
//! must lower to a network whose analyses run and whose formatting round-trips. Compiled model
//! by model, every model of a file that compiles as a whole can be chosen.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = match effnet_compiler::SourceFile::from_bytes("fuzz.effnet", data.to_vec()) {
        Ok(file) => file,
        Err(not_utf8) => {
            let _ = effnet_compiler::render(&not_utf8.file, &[not_utf8.diagnostic], false);
            return;
        }
    };
    let text = &*file.text;
    let whole = effnet_compiler::compile(text);
    let each = effnet_compiler::compile_each(text);
    for name in each.model_names() {
        let chosen = each.choose(Some(name.as_str()));
        assert!(whole.is_err() || chosen.is_ok(), "{name}: {chosen:?}");
        if let Err(refusal) = chosen {
            let _ = effnet_compiler::render(&file, refusal.diagnostics(), false);
            let _ = refusal.message("fuzz.effnet", "with --model");
        }
    }
    match whole {
        Ok(compiled) => {
            for net in &compiled.networks {
                // Bound the work so the fuzzer explores rather than grinds huge networks.
                if net.blocks().count() < 2_000 {
                    let _ = effnet_compiler::analysis::summarize(net, net.resolution.min(4096));
                    let _ = net.to_string();
                }
            }
            let _ = effnet_compiler::render(&file, compiled.warnings(), false);
        }
        Err(diagnostics) => {
            let _ = effnet_compiler::render(&file, &diagnostics, false);
        }
    }
});
