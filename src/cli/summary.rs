use std::path::Path;
use std::process::ExitCode;

use effnet_compiler::analysis::summarize;

use super::load;

pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn run(
    path: &Path,
    model: Option<&str>,
    resolution: Option<usize>,
    json: bool,
) -> Result<ExitCode, String> {
    let loaded = load(path, model)?;
    let net = &loaded.network;
    let resolution = resolution.unwrap_or(net.resolution);
    if resolution == 0 || resolution > effnet_compiler::check::MAX_WHOLE {
        return Err(format!(
            "--resolution must be from 1 to {}",
            effnet_compiler::check::MAX_WHOLE
        ));
    }
    super::warn_chosen_resolution(net, resolution, true);
    let s = summarize(net, resolution);
    let space = super::space_summary(&loaded.file.text, &net.name);
    if json {
        let mut v = serde_json::to_value(&s).map_err(|e| e.to_string())?;
        if let (Some(sp), Some(obj)) = (&space, v.as_object_mut()) {
            obj.insert("space".into(), super::space_json(sp));
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(sp) = &space {
        println!("{}", super::space_line(sp));
        println!("the default candidate (every choice at its first alternative):");
    }
    // A dilation column only for networks that dilate (an `output_stride` below their
    // strides): every other table stays as it was.
    let dilated = net.blocks().any(|b| b.dilation > 1);
    let d = |v: &dyn std::fmt::Display| {
        if dilated {
            format!(" {v:>2}")
        } else {
            String::new()
        }
    };
    println!(
        "{} at {}x{} ({} input channels, {} classes{})",
        s.model,
        resolution,
        resolution,
        net.input_channels,
        net.num_classes,
        if net.output_stride == 32 && !dilated {
            String::new()
        } else {
            format!(", output stride {}", net.output_stride)
        }
    );
    // The kernel column fits MixNet's `3.5.7.9.11`.
    let kw = s
        .stages
        .iter()
        .map(|st| {
            st.kernels
                .iter()
                .map(|k| k.to_string().len() + 1)
                .sum::<usize>()
                .saturating_sub(1)
        })
        .max()
        .unwrap_or(0)
        .max(2);
    println!(
        "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3} {:>6} {:>6} {:>5} {:>12} {:>16}",
        "stage",
        "block",
        "k",
        "exp",
        "s",
        d(&"d"),
        "x",
        "in",
        "out",
        "res",
        "params",
        "MACs"
    );
    println!(
        "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3} {:>6} {:>6} {:>5} {:>12} {:>16}",
        "stem",
        "conv",
        net.stem.conv.kernel,
        "",
        net.stem.conv.stride,
        d(&1),
        1,
        net.input_channels,
        s.stem.output[0],
        s.stem.output[1],
        thousands(s.stem.params as u64),
        thousands(s.stem.macs)
    );
    for st in &s.stages {
        println!(
            "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3} {:>6} {:>6} {:>5} {:>12} {:>16}",
            st.index,
            st.kind,
            if st.kernels.is_empty() {
                st.kernel.to_string()
            } else {
                st.kernels
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(".")
            },
            format!("{:.2}", st.expansion)
                .trim_end_matches('0')
                .trim_end_matches('.'),
            st.stride,
            d(&st.dilation),
            st.runs.first().map_or(st.repeats, |r| r.repeats),
            st.in_channels,
            st.out_channels,
            st.resolution,
            thousands(st.params as u64),
            thousands(st.macs)
        );
        // The stage's further block strings (`then` lines), each on a row of its own.
        for r in st.runs.iter().skip(1) {
            println!(
                "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3}",
                "  then",
                r.kind,
                r.kernel,
                format!("{:.2}", r.expansion)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                1,
                d(&st.dilation),
                r.repeats,
            );
        }
    }
    if let Some(h) = &s.head {
        println!(
            "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3} {:>6} {:>6} {:>5} {:>12} {:>16}",
            "head",
            "conv",
            1,
            "",
            1,
            d(&1),
            1,
            "",
            h.output[0],
            h.output[1],
            thousands(h.params as u64),
            thousands(h.macs)
        );
    }
    println!(
        "{:<6} {:<5} {:>kw$} {:>5} {:>2}{} {:>3} {:>6} {:>6} {:>5} {:>12} {:>16}",
        "fc",
        "",
        "",
        "",
        "",
        d(&""),
        "",
        net.classifier.in_features,
        net.classifier.out_features,
        1,
        thousands(s.classifier.params as u64),
        thousands(s.classifier.macs)
    );
    println!(
        "total: {} parameters, {} multiply-adds ({:.2} G), activations {:.1} MiB per image (f32)",
        thousands(s.params as u64),
        thousands(s.macs),
        s.macs as f64 / 1e9,
        s.activation_bytes as f64 / (1024.0 * 1024.0)
    );
    if !s.features.is_empty() {
        println!(
            "feature maps (timm's features_only levels; `effnet run --features 1,2,3,4` writes them):"
        );
        println!(
            "{:<6} {:<6} {:<9} {:>6} {:>8} {:>9}",
            "level", "stage", "module", "stride", "channels", "size"
        );
        for f in &s.features {
            let stage = f
                .level
                .stage
                .map_or_else(|| "stem".to_string(), |i| i.to_string());
            println!(
                "{:<6} {:<6} {:<9} {:>6} {:>8} {:>9}",
                f.level.index,
                stage,
                f.level.module,
                f.level.stride,
                f.level.channels,
                format!("{}x{}", f.output[1], f.output[2])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
