//! `catga-load`: the load generator behind `./scripts/load.sh`. It starts
//! nats-server (a 3-node cluster where a scenario needs one) and
//! redis-server (a Redis Cluster where needed) on free 127.0.0.1 ports,
//! N instance processes of the bench service (`catga-load-service`), and
//! separate client processes (this binary, `client`), and measures scaling,
//! latency at fixed offered rates against raw async-nats, recovery from
//! failures under steady load, sagas, and per-operation costs. It writes
//! `results.json`, `RESULTS.md` and SVG plots into `--out`.
//!
//! ```text
//! catga-load [--quick | --tiny] [--out DIR] [--only PHASE,..] [--scenarios NAME,..]
//! catga-load client SPEC-JSON          (started by the run)
//! catga-load raw-responder NATS-URL    (started by the run)
//! ```

mod client;
#[allow(dead_code)] // shared with the service, which uses other parts of it
mod contracts;
mod costs;
mod pace;
mod phases;
mod plan;
mod plot;
mod procs;
mod record;
mod report;
mod results;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Arg, ArgAction, Command};
use futures_util::StreamExt;

use crate::plan::{PHASES, Profile, SCENARIOS};
use crate::procs::Bins;
use crate::results::{Costs, Results};
use crate::run::Ctx;

fn cli() -> Command {
    Command::new("catga-load")
        .about("Scaling, latency, recovery and saga figures of Catga, from real processes on this machine")
        .arg(Arg::new("quick").long("quick").action(ArgAction::SetTrue).help("every phase, fewer points (~80 s)"))
        .arg(
            Arg::new("tiny")
                .long("tiny")
                .action(ArgAction::SetTrue)
                .help("the test suite's smoke configuration: every phase at the smallest sizes"),
        )
        .arg(Arg::new("out").long("out").value_name("DIR").default_value("docs/results").help("where to write"))
        .arg(
            Arg::new("only")
                .long("only")
                .value_name("PHASES")
                .value_delimiter(',')
                .help("run only these phases: scaling, latency, recovery, sagas, costs"),
        )
        .arg(
            Arg::new("scenarios")
                .long("scenarios")
                .value_name("NAMES")
                .value_delimiter(',')
                .help("recovery scenarios to run (default: all)"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .help("change one setting of the profile (JSON value), e.g. --set recovery_post_ms=20000"),
        )
        .subcommand(Command::new("client").hide(true).arg(Arg::new("spec").required(true)))
        .subcommand(Command::new("raw-responder").hide(true).arg(Arg::new("nats").required(true)))
}

fn main() -> ExitCode {
    let args = cli().get_matches();
    let result = match args.subcommand() {
        Some(("client", sub)) => {
            let spec = sub.get_one::<String>("spec").expect("required");
            serde_json::from_str(spec).map_err(|e| format!("bad client spec: {e}")).and_then(client::main)
        }
        Some(("raw-responder", sub)) => raw_responder(sub.get_one::<String>("nats").expect("required")),
        _ => orchestrate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catga-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A raw async-nats responder: a queue subscriber that echoes every request,
/// one at a time, as `benches/nats.rs`'s does. Runs until killed, or until
/// its standard input closes (the run that started it is gone).
fn raw_responder(nats: &str) -> Result<(), String> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = async_nats::connect(nats).await.map_err(|e| format!("connect to {nats}: {e}"))?;
        let mut sub = client
            .queue_subscribe(contracts::RAW_SUBJECT, "load-raw".into())
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        client.flush().await.map_err(|e| format!("flush: {e}"))?;
        println!("ready");
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = client.publish(reply, m.payload).await;
            }
        }
        Ok(())
    })
}

fn orchestrate(args: &clap::ArgMatches) -> Result<(), String> {
    let started = Instant::now();
    let mut profile = if args.get_flag("tiny") {
        Profile::tiny()
    } else if args.get_flag("quick") {
        Profile::quick()
    } else {
        Profile::full()
    };
    for assignment in args.get_many::<String>("set").into_iter().flatten() {
        profile.set(assignment)?;
    }
    let list = |name: &str| -> Vec<String> { args.get_many::<String>(name).into_iter().flatten().cloned().collect() };
    let only = list("only");
    let scenarios = list("scenarios");
    if let Some(bad) = only.iter().find(|p| !PHASES.contains(&p.as_str())) {
        return Err(format!("unknown phase {bad:?}; the phases are {}", PHASES.join(", ")));
    }
    if let Some(bad) = scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        return Err(format!("unknown scenario {bad:?}; the scenarios are {}", SCENARIOS.join(", ")));
    }
    let wanted = |phase: &str| only.is_empty() || only.iter().any(|p| p == phase);
    let out = PathBuf::from(args.get_one::<String>("out").expect("has a default"));
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let bins = Bins::find()?;
    for tool in ["nats-server", "redis-server", "redis-cli"] {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not on PATH (./scripts/test.sh installs it)"));
        }
    }
    let machine_before = report::machine();
    let tmp = catga_suite::temp_dir("catga-load");
    let mut ctx = Ctx::new(bins, profile.clone(), tmp.clone())?;
    phases::calibrate_cpu(&mut ctx);
    phases::say(format!(
        "profile {}: CPU work {} rounds = {:.0} µs; writing to {}",
        profile.name,
        ctx.derived.cpu_rounds,
        ctx.derived.cpu_work_us,
        out.display()
    ));

    let (mut scaling, mut latency, mut recovery, mut sagas, mut costs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Costs::default());
    let mut errors = Vec::new();
    let mut note = |phase: &str, r: Result<(), String>| {
        if let Err(e) = r {
            phases::say(format!("{phase} failed: {e}"));
            errors.push(format!("{phase}: {e}"));
        }
    };
    if wanted("scaling") {
        note("scaling", phases::scaling(&mut ctx, &mut scaling));
    }
    if wanted("latency") {
        note("latency", phases::latency(&mut ctx, &mut latency));
    }
    if wanted("recovery") {
        note("recovery", phases::recovery_all(&mut ctx, &scenarios, &mut recovery));
    }
    if wanted("sagas") {
        note("sagas", phases::sagas(&mut ctx, &mut sagas));
    }
    if wanted("costs") {
        note("costs", costs::costs(&mut ctx, &mut costs));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    costs.per_op.append(&mut ctx.extra_costs);

    let mut machine = machine_before;
    machine.load_after = report::load_average();
    let command = match std::env::var("CATGA_LOAD_SCRIPT") {
        Ok(script) => std::iter::once(script).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
        Err(_) => std::env::args().collect::<Vec<_>>().join(" "),
    };
    let mut results = Results {
        tool: "catga-load",
        command,
        profile: profile.name.clone(),
        commit: report::commit(),
        date: report::date(),
        elapsed_s: started.elapsed().as_secs_f64(),
        machine,
        load_models: report::load_models(&profile),
        settings: profile,
        derived: ctx.derived.clone(),
        generator: report::generator(&ctx),
        scaling,
        latency,
        recovery,
        sagas,
        costs,
        goals: Vec::new(),
        instance_log: std::mem::take(&mut ctx.log),
        errors,
    };
    results.goals = report::goals(&results);
    let plots = plot::all(&results, &out)?;
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), json + "\n").map_err(|e| format!("write results.json: {e}"))?;
    std::fs::write(out.join("RESULTS.md"), report::markdown(&results, &plots))
        .map_err(|e| format!("write RESULTS.md: {e}"))?;
    phases::say(format!("done in {:.0} s: {}", started.elapsed().as_secs_f64(), out.join("RESULTS.md").display()));
    if results.errors.is_empty() { Ok(()) } else { Err(format!("{} phase(s) failed", results.errors.len())) }
}
