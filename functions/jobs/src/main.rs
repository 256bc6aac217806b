//! The jobs Lambda function: job status, the caller's credits and provider callbacks.

use media_cache::lambda::Function;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    media_cache::lambda::run(Function::Jobs).await
}
