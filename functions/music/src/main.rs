//! The music Lambda function: the API's music route behind API Gateway; a miss starts a Suno job.

use media_cache::lambda::Function;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    media_cache::lambda::run(Function::Music).await
}
