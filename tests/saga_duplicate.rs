//! Two sagas with one name in one program: their states would mix, so the
//! instance refuses to start and names both places.

use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

struct First;

#[catga::saga(name = "t-same-name")]
impl First {
    #[step]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct Second;

#[catga::saga(name = "t-same-name")]
impl Second {
    #[step]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_duplicate_saga_name_is_a_startup_error_naming_both_places() {
    let err = Catga::builder().client_only().start().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("duplicate saga name \"t-same-name\""), "{text}");
    assert!(text.contains("tests/saga_duplicate.rs:13") && text.contains("tests/saga_duplicate.rs:23"), "{text}");
    assert!(text.contains("rename one"), "{text}");
}
