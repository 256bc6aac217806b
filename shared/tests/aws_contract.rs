//! The store, job queue and object storage contracts on the AWS adapters (DynamoDB, SQS, S3),
//! against the AWS emulator that `scripts/test.sh` starts.

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
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let store = Arc::new(DynamoStore::new(
            client.clone(),
            env("MEDIA_TEST_TABLE"),
            "s3://contract-bucket/",
        ));
        StoreHarness {
            store: store.clone(),
            usage: store,
            // A READY item without its result keys and with a created_at that is no time.
            corrupt: Box::new(move |key| {
                let client = client.clone();
                Box::pin(async move {
                    use aws_sdk_dynamodb::types::AttributeValue::{N, S};
                    client
                        .put_item()
                        .table_name(env("MEDIA_TEST_TABLE"))
                        .item("PK", S(key.to_string()))
                        .item("SK", S("RESULT".into()))
                        .item("status", S("READY".into()))
                        .item("created_at", S("yesterday".into()))
                        .item("ttl", N("4102444800".into()))
                        .send()
                        .await
                        .unwrap();
                })
            }),
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
        let client = media_cache::lambda::s3_client(&sdk);
        let store = S3ObjectStore::new(client.clone(), env("MEDIA_TEST_BUCKET"), None);
        Harness {
            store: Arc::new(store),
            // Every object of the bucket under the prefix, every page.
            list_under: Box::new(move |prefix| {
                let client = client.clone();
                Box::pin(async move {
                    let mut keys = Vec::new();
                    let mut pages = client
                        .list_objects_v2()
                        .bucket(env("MEDIA_TEST_BUCKET"))
                        .prefix(prefix)
                        .into_paginator()
                        .send();
                    while let Some(page) = pages.next().await {
                        keys.extend(
                            page.unwrap()
                                .contents()
                                .iter()
                                .filter_map(|o| o.key().map(str::to_owned)),
                        );
                    }
                    keys.sort();
                    keys
                })
            }),
            _guard: Box::new(()),
        }
    }

    crate::object_contract!(harness());
}

mod sqs {
    use super::contract::queue::QueueHarness;
    use super::env;
    use media_cache::adapters::sqs_queue::SqsJobQueue;
    use std::sync::Arc;

    async fn harness() -> QueueHarness {
        env("AWS_ENDPOINT_URL");
        let sdk = media_cache::lambda::sdk_config().await;
        let client = aws_sdk_sqs::Client::new(&sdk);
        let name = format!(
            "contract-{}",
            media_cache::service::accounts::generate_request_id()
        );
        let url = client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let (consumer, queue_url) = (client.clone(), url.clone());
        QueueHarness {
            queue: Arc::new(SqsJobQueue::new(client, url)),
            receive: Box::new(move || {
                let (consumer, queue_url) = (consumer.clone(), queue_url.clone());
                Box::pin(async move {
                    let out = consumer
                        .receive_message()
                        .queue_url(&queue_url)
                        .max_number_of_messages(10)
                        .send()
                        .await
                        .unwrap();
                    let mut messages = Vec::new();
                    for m in out.messages.unwrap_or_default() {
                        consumer
                            .delete_message()
                            .queue_url(&queue_url)
                            .receipt_handle(m.receipt_handle.unwrap_or_default())
                            .send()
                            .await
                            .unwrap();
                        messages.push(serde_json::from_str(&m.body.unwrap_or_default()).unwrap());
                    }
                    messages
                })
            }),
            _guard: Box::new(()),
        }
    }

    crate::queue_contract!(harness());
}
