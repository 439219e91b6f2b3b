//! `catga dlq list` and `catga dlq replay`: the dead-letter stream of
//! durable messages (JetStream `CATGA_DLQ`).

use catga::Config;
use serde_json::json;

use crate::connect;
use crate::output::{Failure, Out, Table};

/// `catga dlq list [SUBJECT] [--from SEQ] [--limit N]`.
pub(crate) async fn list(
    config: &Config,
    subject: Option<String>,
    from: u64,
    limit: usize,
    out: Out,
) -> Result<(), Failure> {
    let app = connect::nats_app(config, "the dead-letter stream").await?;
    // `>`: every subject's letters.
    let filter = subject.as_deref().unwrap_or(">");
    let page = app.dead_letters_page(filter, from, limit).await;
    app.shutdown().await;
    let page = page.map_err(|e| Failure::new(format!("listing dead letters: {e}")))?;
    if out.json {
        let letters: Vec<_> = page
            .letters
            .iter()
            .map(|l| {
                json!({
                    "sequence": l.sequence,
                    "subject": l.subject,
                    "message_id": l.message_id.map(|id| id.to_string()),
                    "code": l.code,
                    "reason": l.reason,
                    "handler": l.handler,
                    "deliveries": l.deliveries,
                    "payload": String::from_utf8_lossy(&l.payload),
                })
            })
            .collect();
        out.json(&json!({ "letters": letters, "next": page.next }));
        return Ok(());
    }
    if page.letters.is_empty() {
        println!("no dead letters{}", subject.map(|s| format!(" of {s}")).unwrap_or_default());
        return Ok(());
    }
    let mut table = Table::new(&["SEQ", "SUBJECT", "CODE", "DELIVERIES", "HANDLER", "REASON", "PAYLOAD"]);
    for l in &page.letters {
        let mut payload = String::from_utf8_lossy(&l.payload).into_owned();
        if payload.chars().count() > 60 {
            payload = payload.chars().take(59).chain(['…']).collect();
        }
        table.row(vec![
            l.sequence.to_string(),
            l.subject.clone(),
            l.code.clone(),
            l.deliveries.to_string(),
            l.handler.clone(),
            l.reason.clone(),
            payload,
        ]);
    }
    table.print();
    if let Some(next) = page.next {
        println!("\nmore: catga dlq list {}--from {next}", subject.map(|s| format!("{s} ")).unwrap_or_default());
    }
    Ok(())
}

/// `catga dlq replay SEQ`.
pub(crate) async fn replay(config: &Config, sequence: u64, out: Out) -> Result<(), Failure> {
    let app = connect::nats_app(config, "the dead-letter stream").await?;
    let replayed = app.replay_dead_letter(sequence).await;
    app.shutdown().await;
    replayed.map_err(|e| Failure::new(format!("replaying dead letter {sequence}: {e}")))?;
    if out.json {
        out.json(&json!({ "replayed": sequence }));
    } else {
        println!("dead letter {sequence} published again on its subject and deleted from the dead-letter stream");
    }
    Ok(())
}
