//! The reference of `coldstart`: the smallest `lambda_runtime` function (a constant answer to any
//! event), on the same tokio runtime and built with the same release profile as the functions.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_: LambdaEvent<Value>| async {
        Ok::<_, Error>(json!({"statusCode": 200, "body": "{\"status\":\"ok\"}"}))
    }))
    .await
}
