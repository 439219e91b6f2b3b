//! `catga`: the operator's command line for Catga services. It reads the
//! same `CATGA_*` variables as the services (`CATGA_NATS_URL`,
//! `CATGA_REDIS_URL`, `CATGA_REQUEST_TIMEOUT_MS`, ...).
//!
//! ```text
//! catga services [SERVICE]        every running instance ($SRV.INFO)
//! catga stats [SERVICE]           per-endpoint counters ($SRV.STATS)
//! catga sagas [NAME] [--status S] sagas still running, compensating or failed (Redis)
//! catga saga NAME ID              one saga: state, data and history (Redis)
//! catga dlq list [SUBJECT]        dead letters (JetStream)
//! catga dlq replay SEQ            publish a dead letter again, then delete it
//! catga send SUBJECT JSON         a request with Catga's headers; prints the reply
//! ```
//!
//! `--json` (anywhere) prints JSON for scripts instead of tables. Exit
//! status: 0 done, 1 failed (unreachable server, nothing found, an error
//! reply), 2 wrong usage.

mod connect;
mod dlq;
mod output;
mod sagas;
mod send;
mod services;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::output::{Failure, Out};

fn cli() -> Command {
    let wait = Arg::new("wait")
        .long("wait")
        .value_name("MS")
        .value_parser(clap::value_parser!(u64))
        .default_value("500")
        .help("how long to gather replies from instances, in milliseconds");
    Command::new("catga")
        .about("Operate Catga services: instances, counters, sagas, dead letters, raw requests")
        .after_help(
            "Configured by the services' own variables: CATGA_NATS_URL (services, stats, dlq, send), \
             CATGA_REDIS_URL (sagas, saga), CATGA_REQUEST_TIMEOUT_MS (send).",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(Arg::new("json").long("json").global(true).action(ArgAction::SetTrue).help("print JSON, for scripts"))
        .subcommand(
            Command::new("services")
                .about("List running services and their instances, versions and endpoints ($SRV.INFO)")
                .arg(Arg::new("service").value_name("SERVICE").help("only this service"))
                .arg(wait.clone()),
        )
        .subcommand(
            Command::new("stats")
                .about("Per-endpoint counters of every instance: requests, errors, time ($SRV.STATS)")
                .arg(Arg::new("service").value_name("SERVICE").help("only this service"))
                .arg(wait),
        )
        .subcommand(
            Command::new("sagas")
                .about("Sagas still running, compensating, or failed (finished ones: `catga saga NAME ID`)")
                .arg(Arg::new("name").value_name("NAME").help("only sagas of this type"))
                .arg(
                    Arg::new("status")
                        .long("status")
                        .value_name("STATUS")
                        .value_parser(["running", "compensating", "failed"])
                        .help("only sagas with this status"),
                ),
        )
        .subcommand(
            Command::new("saga")
                .about("One saga: status, current step, data and history")
                .arg(Arg::new("name").value_name("NAME").required(true).help("the saga type's name"))
                .arg(Arg::new("id").value_name("ID").required(true).help("the saga's id")),
        )
        .subcommand(
            Command::new("dlq")
                .about("The dead-letter stream of durable messages")
                .subcommand_required(true)
                .subcommand(
                    Command::new("list")
                        .about("Dead letters, oldest first")
                        .arg(Arg::new("subject").value_name("SUBJECT").help("only those sent on this subject"))
                        .arg(
                            Arg::new("from")
                                .long("from")
                                .value_name("SEQ")
                                .value_parser(clap::value_parser!(u64))
                                .default_value("0")
                                .help("start at this dead-letter sequence"),
                        )
                        .arg(
                            Arg::new("limit")
                                .long("limit")
                                .value_name("N")
                                .value_parser(clap::value_parser!(u64).range(1..=1000))
                                .default_value("100")
                                .help("at most this many"),
                        ),
                )
                .subcommand(
                    Command::new("replay")
                        .about("Publish a dead letter again on its original subject, then delete it")
                        .arg(
                            Arg::new("seq")
                                .value_name("SEQ")
                                .required(true)
                                .value_parser(clap::value_parser!(u64))
                                .help("its sequence, from `catga dlq list`"),
                        ),
                ),
        )
        .subcommand(
            Command::new("send")
                .about("Send a request with Catga's headers and print the reply or the typed error")
                .arg(Arg::new("subject").value_name("SUBJECT").required(true).help("the command's subject"))
                .arg(Arg::new("payload").value_name("JSON").required(true).help("the command, as JSON"))
                .arg(
                    Arg::new("timeout")
                        .long("timeout")
                        .value_name("MS")
                        .value_parser(clap::value_parser!(u64).range(1..=86_400_000))
                        .help("give up after this many milliseconds, at most a day (default: CATGA_REQUEST_TIMEOUT_MS, 5 s)"),
                ),
        )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = cli().get_matches();
    let out = Out { json: matches.get_flag("json") };
    match run(&matches, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(out),
    }
}

async fn run(matches: &ArgMatches, out: Out) -> Result<(), Failure> {
    let config = catga::Config::from_env().map_err(|e| Failure::new(e.to_string()))?;
    let window = |m: &ArgMatches| Duration::from_millis(*m.get_one::<u64>("wait").expect("has a default"));
    let text = |m: &ArgMatches, name: &str| m.get_one::<String>(name).cloned();
    match matches.subcommand().expect("a subcommand is required") {
        ("services", m) => services::services(&config, text(m, "service"), window(m), out).await,
        ("stats", m) => services::stats(&config, text(m, "service"), window(m), out).await,
        ("sagas", m) => sagas::list(&config, text(m, "name"), text(m, "status"), out).await,
        ("saga", m) => {
            sagas::show(&config, &text(m, "name").expect("required"), &text(m, "id").expect("required"), out).await
        }
        ("dlq", m) => match m.subcommand().expect("a subcommand is required") {
            ("list", m) => {
                let (from, limit) =
                    (*m.get_one::<u64>("from").expect("default"), *m.get_one::<u64>("limit").expect("default"));
                dlq::list(&config, text(m, "subject"), from, limit as usize, out).await
            }
            ("replay", m) => dlq::replay(&config, *m.get_one::<u64>("seq").expect("required"), out).await,
            _ => unreachable!("clap knows the subcommands"),
        },
        ("send", m) => {
            let timeout =
                m.get_one::<u64>("timeout").map(|ms| Duration::from_millis(*ms)).unwrap_or(config.request_timeout);
            send::send(
                &config,
                &text(m, "subject").expect("required"),
                &text(m, "payload").expect("required"),
                timeout,
                out,
            )
            .await
        }
        _ => unreachable!("clap knows the subcommands"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        super::cli().debug_assert();
    }
}
