//! Parse, check, lower and analyse arbitrary text: nothing may panic, and whatever compiles
//! must lower to a network whose analyses run and whose formatting round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = effnet_compiler::SourceFile::new("fuzz.effnet", text);
    match effnet_compiler::compile(text) {
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
