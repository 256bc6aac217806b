//! The completion Lambda function: an SQS consumer that finishes music and video jobs, reporting
//! partial batch failures.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    media_cache::lambda::run_completion().await
}
