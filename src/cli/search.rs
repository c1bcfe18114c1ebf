//! `effnet search`: training-aware architecture search over a spec's search space, with a
//! progress bar, `search.csv`, `pareto.png` and the best models as ordinary specs in the output
//! directory. The search itself is `effnet_runtime::search`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use effnet_compiler::search::{Metric, SearchDef, Space, Strategy, searches};
use effnet_compiler::{check::check_each, parse, parse_error_diagnostic};
use effnet_runtime::search::{Engine, Progress, Record, Setup, Status, pareto_front};
use effnet_runtime::train::Event;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::compute::{ComputeArgs, device};
use super::{print_diagnostics, read_spec};

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// The spec file: a model with choices and (optionally) a `search` item.
    pub spec: PathBuf,
    /// The search item (default: the file's only one); or a model with choices, searched with
    /// the default settings.
    #[arg(long)]
    pub search: Option<String>,
    /// Dataset: a directory of MNIST-style IDX files (data/fashion) or an image folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: search.json (the state), search.csv, pareto.png, best_N.effnet.
    #[arg(long)]
    pub out: PathBuf,
    /// Candidates in all (default: the search's `candidates`); a resumed search may raise it.
    #[arg(long)]
    pub budget: Option<usize>,
    /// random or evolution (default: the search's `strategy`).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Seed of the draws, the weights and the data order (default 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate each proxy on the first N test images (default: all).
    #[arg(long, value_name = "N")]
    pub test_images: Option<usize>,
    /// After the search, train N candidates (spread over the proxy's ranking) for
    /// --rank-epochs with the spec's own schedule and report how well the proxy ranked them
    /// (Kendall tau; rank.csv).
    #[arg(long, value_name = "N")]
    pub rank_check: Option<usize>,
    /// Epochs of the --rank-check training (default: the schedule's).
    #[arg(long, value_name = "E")]
    pub rank_epochs: Option<usize>,
    /// Continue the search in --out.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// The search to run: the one named, the file's only one, or default settings for a space.
fn choose(file: &effnet_compiler::grammar::File, name: Option<&str>) -> Result<SearchDef, String> {
    let defs = searches(file);
    let spaces = Space::all(file);
    match name {
        Some(n) => defs
            .iter()
            .find(|d| d.name == n)
            .cloned()
            .or_else(|| {
                spaces
                    .iter()
                    .any(|s| s.model == n)
                    .then(|| SearchDef::default_for(n))
            })
            .ok_or_else(|| {
                format!(
                    "no search or search space named `{n}`; the file has searches [{}] and spaces [{}]",
                    defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
                    spaces.iter().map(|s| s.model.as_str()).collect::<Vec<_>>().join(", ")
                )
            }),
        None => match (defs.as_slice(), spaces.as_slice()) {
            ([one], _) => Ok(one.clone()),
            ([], [one]) => Ok(SearchDef::default_for(&one.model)),
            ([], []) => Err("the file has no search space: write choices in a model's stage \
                 lines, like `stage {fused|mbconv} k{3|5} e{1|4|6} s2 -> 48 x{1..4}`"
                .into()),
            _ => Err("the file has several searches or spaces; choose one with --search".into()),
        },
    }
}

pub fn run(a: SearchArgs) -> Result<ExitCode, String> {
    let spec = read_spec(&a.spec)?;
    let file = parse(&spec.text).map_err(|e| {
        print_diagnostics(&spec, &[parse_error_diagnostic(&e)]);
        format!("`{}` does not parse", spec.name)
    })?;
    let found = check_each(&file);
    let def = choose(&file, a.search.as_deref())?;
    let errors: Vec<_> = found
        .diagnostics
        .iter()
        .filter(|d| d.is_error() && found.items.concerns(&def.space, d))
        .cloned()
        .collect();
    if !errors.is_empty() {
        print_diagnostics(&spec, &errors);
        return Err(format!(
            "the space `{}` in `{}` has errors",
            def.space, spec.name
        ));
    }
    let space = file
        .items
        .iter()
        .find_map(|i| match i {
            effnet_compiler::grammar::Item::Model(m) if m.name.name == def.space => Space::of(m),
            _ => None,
        })
        .ok_or_else(|| format!("`{}` has no choices", def.space))?;
    let strategy = match a.strategy.as_deref() {
        None => def.strategy,
        Some("random") => Strategy::Random,
        Some("evolution") => match def.strategy {
            Strategy::Evolution { .. } => def.strategy,
            Strategy::Random => SearchDef::default_for(&def.space).strategy,
        },
        Some(other) => {
            return Err(format!(
                "--strategy `{other}`: expected random or evolution"
            ));
        }
    };
    let budget = a.budget.unwrap_or(def.candidates);
    if budget == 0 {
        return Err("--budget must be at least 1".into());
    }
    let setup = Setup {
        source: spec.text.to_string(),
        spec_path: a.spec.clone(),
        file,
        def,
        space,
        strategy,
        budget,
        seed: a.seed,
        test_images: a.test_images,
        device: device(a.compute.device)?,
        out: a.out.clone(),
    };
    println!(
        "search `{}` over `{}`: {} candidates of a space of {}, {}; proxy {} epoch{} at {}",
        setup.def.name,
        setup.space.model,
        budget,
        size_text(setup.space.size()),
        match strategy {
            Strategy::Random => "random".to_string(),
            Strategy::Evolution { population, sample } =>
                format!("aging evolution (population {population}, sample {sample})"),
        },
        setup.def.epochs,
        if setup.def.epochs == 1 { "" } else { "s" },
        setup
            .def
            .image
            .map_or("the schedule's image size".to_string(), |i| format!(
                "{i} px"
            )),
    );
    println!("measuring the base model ...");
    let mut engine = Engine::start(setup, &a.data, a.resume)?;
    let base = &engine.state.base;
    println!(
        "base `{}`: {} parameters, {} MACs, {:.2} ms per training step",
        base.model,
        base.params,
        base.macs,
        base.step_time * 1e3
    );
    if a.resume {
        println!(
            "resuming `{}` after {} of {} candidates",
            a.out.display(),
            engine.state.records.len(),
            budget
        );
    }
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(budget as u64)
    } else {
        ProgressBar::with_draw_target(Some(budget as u64), ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} candidates [{elapsed_precise}] {msg}")
            .map_err(|e| e.to_string())?,
    );
    bar.set_position(engine.state.records.len() as u64);
    while !engine.done() {
        let best = best_text(&engine);
        let mut observe = |p: Progress| match p {
            Progress::Measuring { index } => {
                bar.set_message(format!("{best} | #{index}: measuring"));
            }
            Progress::Training { index, event } => {
                if let Event::Step {
                    epoch, step, steps, ..
                } = event
                {
                    bar.set_message(format!(
                        "{best} | #{index}: epoch {} step {}/{steps}",
                        epoch + 1,
                        step + 1
                    ));
                }
            }
        };
        let r = engine.step(&mut observe)?;
        bar.inc(1);
        bar.suspend(|| println!("{}", record_line(&engine, &r)));
        plot_pareto(&engine, &a.out.join("pareto.png"))?;
    }
    bar.finish_and_clear();
    plot_pareto(&engine, &a.out.join("pareto.png"))?;
    report(&engine, &a.out);
    if let Some(n) = a.rank_check {
        if n < 2 {
            return Err("--rank-check needs 2 candidates at least".into());
        }
        let epochs = match a.rank_epochs {
            Some(e) => e,
            None => {
                let net = effnet_compiler::search::candidate_network(
                    &engine.setup.file,
                    &engine.setup.space,
                    &engine.setup.space.default_picks(),
                )
                .map_err(|_| "the space's default candidate is not a valid model".to_string())?;
                net.training_schedule(None, None)?.epochs
            }
        };
        println!("rank check: {n} candidates, {epochs} epochs each with the spec's schedule ...");
        let check = engine.rank_check(n, epochs, &mut |_| {})?;
        for (i, proxy, long) in &check.rows {
            println!(
                "#{i:<3} proxy top-1 {:5.1}%  after {epochs} epochs {:5.1}%",
                100.0 * proxy,
                100.0 * long
            );
        }
        println!(
            "Kendall tau between the proxy's ranking and the longer training's: {:.3} (rank.csv)",
            check.tau
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn size_text(size: f64) -> String {
    if size < 1e6 {
        format!("{size:.0}")
    } else {
        format!("{size:.2e}")
    }
}

fn best_text(engine: &Engine) -> String {
    match engine.best() {
        Some(b) => format!(
            "best #{} reward {:.4} top-1 {:.1}%",
            b.index,
            b.reward,
            100.0 * b.accuracy
        ),
        None => "no candidate yet".to_string(),
    }
}

fn record_line(engine: &Engine, r: &Record) -> String {
    let choices: Vec<String> = engine
        .setup
        .space
        .points
        .iter()
        .zip(&r.picks)
        .map(|(p, &i)| p.written(i))
        .collect();
    let outcome = match &r.status {
        Status::Trained => format!("top-1 {:5.1}%  reward {:.4}", 100.0 * r.accuracy, r.reward),
        Status::Violates(c) => format!("violates {c}: not trained"),
        Status::Invalid(why) => format!("invalid: {why}"),
    };
    format!(
        "#{:<3} {:>8} params {:>7.2} ms/step  {outcome}  [{}]  {:.0} s",
        r.index,
        r.params,
        r.step_time * 1e3,
        choices.join(" "),
        r.wall_s
    )
}

fn report(engine: &Engine, out: &Path) {
    let trained = engine
        .state
        .records
        .iter()
        .filter(|r| r.status == Status::Trained)
        .count();
    println!(
        "{} candidates, {trained} trained; {}",
        engine.state.records.len(),
        best_text(engine)
    );
    for m in [Metric::StepTime, Metric::Params] {
        let front: Vec<String> = pareto_front(&engine.state.records, m)
            .into_iter()
            .map(|i| format!("#{i}"))
            .collect();
        println!(
            "Pareto front, top-1 against {}: {}",
            m.name(),
            front.join(" ")
        );
    }
    println!(
        "wrote {}/search.csv, pareto.png and best_1.effnet ... (`effnet train {}/best_1.effnet --data ...` trains the best)",
        out.display(),
        out.display()
    );
}

static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

/// Proxy top-1 against step time (left) and against parameters (right): every trained
/// candidate, the Pareto front joined, the best by reward ringed.
fn plot_pareto(engine: &Engine, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let records = &engine.state.records;
    let trained: Vec<&Record> = records
        .iter()
        .filter(|r| r.status == Status::Trained)
        .collect();
    if trained.is_empty() {
        return Ok(());
    }
    let perr = |e: &dyn std::fmt::Display| format!("cannot draw `{}`: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let (left, right) = root.split_horizontally(600);
    let best = engine.best().map(|b| b.index);
    let acc_lo = trained.iter().map(|r| r.accuracy).fold(1.0f64, f64::min);
    let acc_hi = trained.iter().map(|r| r.accuracy).fold(0.0f64, f64::max);
    let pad = ((acc_hi - acc_lo) * 0.1).max(0.01);
    let (y0, y1) = (
        100.0 * (acc_lo - pad).max(0.0),
        100.0 * (acc_hi + pad).min(1.0),
    );
    for (area, metric, label, scale) in [
        (&left, Metric::StepTime, "training step (ms)", 1e3),
        (&right, Metric::Params, "parameters (k)", 1e-3),
    ] {
        let xs: Vec<f64> = trained.iter().map(|r| r.value(metric) * scale).collect();
        let x_lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let x_hi = xs.iter().copied().fold(0.0f64, f64::max);
        let xpad = ((x_hi - x_lo) * 0.1).max(x_hi * 0.02).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("proxy top-1 against {}", metric.name()),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((x_lo - xpad).max(0.0)..x_hi + xpad, y0..y1)
            .map_err(|e| perr(&e))?;
        chart
            .configure_mesh()
            .x_desc(label)
            .y_desc("top-1 %")
            .draw()
            .map_err(|e| perr(&e))?;
        chart
            .draw_series(trained.iter().map(|r| {
                Circle::new(
                    (r.value(metric) * scale, 100.0 * r.accuracy),
                    4,
                    BLUE.mix(0.6).filled(),
                )
            }))
            .map_err(|e| perr(&e))?;
        let front: Vec<(f64, f64)> = pareto_front(records, metric)
            .into_iter()
            .map(|i| {
                (
                    records[i].value(metric) * scale,
                    100.0 * records[i].accuracy,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(front, RED.stroke_width(2)))
            .map_err(|e| perr(&e))?;
        if let Some(b) = best.and_then(|i| records.get(i)) {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (b.value(metric) * scale, 100.0 * b.accuracy),
                    9,
                    GREEN.stroke_width(2),
                )))
                .map_err(|e| perr(&e))?;
        }
    }
    root.present().map_err(|e| perr(&e))?;
    Ok(())
}
