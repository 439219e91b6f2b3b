//! `catga sagas` and `catga saga NAME ID`: what the Redis store holds of
//! sagas, by name (the CLI links no saga type).

use catga::Config;
use catga::saga::{Direction, SagaInfo, SagaStatus};
use serde_json::json;

use crate::connect;
use crate::output::{Failure, Out, Table};

fn status_name(status: SagaStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `catga sagas [NAME] [--status S]`: every saga still running,
/// compensating or failed, of one type or of every type an instance linked.
pub(crate) async fn list(
    config: &Config,
    name: Option<String>,
    status: Option<String>,
    out: Out,
) -> Result<(), Failure> {
    let app = connect::redis_app(config, "sagas").await?;
    let listed = async {
        let names = match name {
            Some(name) => vec![name],
            None => app.saga_names().await?,
        };
        // Without --status: what needs attention — not finished, or failed
        // (a completed saga can linger in the index until the sweep drops it).
        let keep = |s: SagaStatus| match status.as_deref() {
            Some(wanted) => status_name(s) == wanted,
            None => !s.is_finished() || s == SagaStatus::Failed,
        };
        let mut sagas = Vec::new();
        for name in &names {
            sagas.extend(app.sagas_by_name(name, keep).await?);
        }
        Ok::<_, catga::Error>((names, sagas))
    }
    .await;
    app.shutdown().await;
    let (names, mut sagas) = listed.map_err(|e| Failure::new(format!("reading sagas: {e}")))?;
    sagas.sort_by(|a, b| (&a.saga, &a.id).cmp(&(&b.saga, &b.id)));
    if out.json {
        out.json(&json!({ "saga_types": names, "sagas": sagas }));
        return Ok(());
    }
    if names.is_empty() {
        println!("no saga types are known to this store (an instance records those it links when it starts)");
        return Ok(());
    }
    let summary = format!("of {} type(s): {}", names.len(), names.join(", "));
    if sagas.is_empty() {
        println!("no saga is running, compensating or failed ({summary})");
        return Ok(());
    }
    let mut table = Table::new(&["SAGA", "ID", "STATUS", "STEP", "ERROR"]);
    for s in &sagas {
        table.row(vec![
            s.saga.clone(),
            s.id.clone(),
            status_name(s.status),
            s.current_step.clone().unwrap_or_else(|| "-".into()),
            s.error.clone().unwrap_or_default(),
        ]);
    }
    table.print();
    println!("\n{} saga(s) {summary}", sagas.len());
    Ok(())
}

/// `catga saga NAME ID`: one saga, finished or not.
pub(crate) async fn show(config: &Config, name: &str, id: &str, out: Out) -> Result<(), Failure> {
    let app = connect::redis_app(config, "sagas").await?;
    let found = app.saga_status_by_name(name, id).await;
    app.shutdown().await;
    let info = found
        .map_err(|e| Failure::new(format!("reading saga {name} {id}: {e}")))?
        .ok_or_else(|| Failure::new(format!("no saga {name:?} with id {id:?} in this store (see `catga sagas`)")))?;
    if out.json {
        out.json(&json!(info));
        return Ok(());
    }
    print_saga(&info);
    Ok(())
}

fn print_saga(s: &SagaInfo) {
    println!("saga     {} {}", s.saga, s.id);
    println!("status   {}", status_name(s.status));
    if let Some(step) = &s.current_step {
        println!("step     {step}");
    }
    if let Some(error) = &s.error {
        println!("error    {error}");
    }
    if s.waiting {
        let until = s.waiting_until.map(|t| humantime::format_rfc3339_millis(t).to_string());
        println!("waiting  for its event (parked){}", until.map(|u| format!(" until {u}")).unwrap_or_default());
    }
    let times = [("created", s.created), ("updated", s.updated), ("finished", s.finished), ("deadline", s.deadline)];
    for (what, at) in times {
        if let Some(at) = at {
            println!("{what:<8} {}", humantime::format_rfc3339_millis(at));
        }
    }
    println!("version  {}", s.version);
    println!("data     {}", s.data);
    if s.history.is_empty() {
        return;
    }
    println!();
    let mut table = Table::new(&["#", "STEP", "DIRECTION", "ATTEMPTS", "RESULT"]);
    for (i, h) in s.history.iter().enumerate() {
        let direction = match h.direction {
            Direction::Forward => "forward",
            Direction::Compensate => "compensate",
        };
        let result = h.error.clone().map_or_else(|| "ok".to_owned(), |e| format!("failed: {e}"));
        table.row(vec![(i + 1).to_string(), h.step.clone(), direction.into(), h.attempts.to_string(), result]);
    }
    table.print();
}
