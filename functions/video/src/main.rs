//! The video Lambda function: the API's video route behind API Gateway; a miss starts a Kling job.

use media_cache::lambda::Function;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    media_cache::lambda::run(Function::Video).await
}
