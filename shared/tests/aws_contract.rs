//! The store and object storage contracts on the AWS adapters (DynamoDB, S3), against the AWS
//! emulator that `scripts/test.sh` starts.

#![cfg(feature = "aws")]

mod contract;

/// A variable the test script sets; its absence means the emulator is not running.
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which starts the AWS emulator")
    })
}

mod dynamodb {
    use super::contract::store::StoreHarness;
    use super::env;
    use media_cache::adapters::dynamodb::DynamoStore;
    use std::sync::Arc;

    async fn store() -> StoreHarness {
        env("AWS_ENDPOINT_URL");
        let sdk = media_cache::lambda::sdk_config().await;
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            env("MEDIA_TEST_TABLE"),
            "s3://contract-bucket/",
        );
        StoreHarness {
            store: Arc::new(store),
            _guard: Box::new(()),
        }
    }

    crate::store_contract!(store());
}

mod s3 {
    use super::contract::objects::Harness;
    use super::env;
    use media_cache::adapters::s3_objects::S3ObjectStore;
    use std::sync::Arc;

    async fn harness() -> Harness {
        env("AWS_ENDPOINT_URL");
        let sdk = media_cache::lambda::sdk_config().await;
        let store = S3ObjectStore::new(
            media_cache::lambda::s3_client(&sdk),
            env("MEDIA_TEST_BUCKET"),
            None,
        );
        Harness {
            store: Arc::new(store),
            _guard: Box::new(()),
        }
    }

    crate::object_contract!(harness());
}
