//! The image Lambda function: the API's image route behind API Gateway, on DynamoDB and S3.

use media_cache::lambda::Function;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    media_cache::lambda::run(Function::Image).await
}
