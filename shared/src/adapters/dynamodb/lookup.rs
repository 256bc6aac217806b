use super::item::spend_of;
use super::{DynamoStore, build_err, get_n, get_s, key, store_err, user_pk};
use crate::domain::CacheKey;
use crate::ports::{Lookup, LookupStore, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::KeysAndAttributes;

#[async_trait]
impl LookupStore for DynamoStore {
    async fn lookup(
        &self,
        api_key_digest: &str,
        cache_key: Option<&CacheKey>,
    ) -> Result<Lookup, StoreError> {
        let known = self.known_owner(api_key_digest);
        let mut keys = vec![key(format!("APIKEY#{api_key_digest}"), "LOOKUP")];
        if let Some(cache_key) = cache_key {
            keys.push(key(cache_key.to_string(), "RESULT"));
        }
        if let Some(user) = &known {
            keys.push(key(user_pk(user), "PROFILE"));
        }
        let mut request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(build_err)?;
        let mut items = Vec::new();
        // BatchGetItem may return some keys unprocessed under throttling: ask again for those.
        for _ in 0..5 {
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request.clone())
                .send()
                .await
                .map_err(store_err)?;
            if let Some(found) = out.responses().and_then(|r| r.get(&self.table)) {
                items.extend(found.iter().cloned());
            }
            match out.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                Some(rest) if !rest.keys().is_empty() => request = rest.clone(),
                _ => break,
            }
        }
        let find = |pk_prefix: &str, sk: &str| {
            items.iter().find(|i| {
                get_s(i, "SK") == Some(sk)
                    && get_s(i, "PK").is_some_and(|pk| pk.starts_with(pk_prefix))
            })
        };
        let user_id = find("APIKEY#", "LOOKUP")
            .and_then(|i| get_s(i, "user_id"))
            .map(str::to_owned);
        self.remember_owner(api_key_digest, user_id.as_deref());
        let profile = match (&user_id, &known) {
            (Some(user), Some(k)) if user == k => find(&user_pk(user), "PROFILE"),
            _ => None,
        };
        let balance = profile.and_then(|i| get_n(i, "credits_remaining"));
        // The daily limit and spend, for the charge's conditions (an unreadable one is left
        // unknown: the charge's guess then fails its condition and the charge fails).
        let spend = balance.and(profile).and_then(spend_of);
        let entry = find("CACHE#", "RESULT").and_then(|item| {
            let parsed = self.parse_entry(item);
            if parsed.is_none() {
                tracing::warn!(
                    pk = get_s(item, "PK").unwrap_or_default(),
                    "unreadable cache entry"
                );
            }
            parsed
        });
        Ok(Lookup {
            user_id,
            entry,
            balance,
            spend,
        })
    }
}
