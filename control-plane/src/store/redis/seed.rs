//! Writing a replica's view back into a Redis that lost its data
//! (`Store::seed`, the script `lua/seed.lua`).

use super::{corrupt, parse_u64, RedisStore};
use crate::store::{initial_state, to_json, Seed, SeedOutcome, StoreError};

impl RedisStore {
    /// [`crate::store::Store::seed`]: one script, which writes nothing
    /// when the store holds a config.
    pub(super) async fn write_back(&self, seed: &Seed) -> Result<SeedOutcome, StoreError> {
        let quoted = to_json(&seed.config_json);
        let version = seed.version.to_string();
        let initial = to_json(&initial_state());
        let encoded: Vec<[String; 4]> = seed
            .instances
            .iter()
            .map(|s| {
                // 0: a static instance, which has no lease.
                let ttl = s.lease_ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                [
                    s.instance.spec.id.clone(),
                    to_json(&s.instance.spec),
                    to_json(&s.instance.state),
                    ttl.to_string(),
                ]
            })
            .collect();
        let mut args: Vec<&str> = vec![&seed.config_json, &quoted, &version, &initial];
        args.extend(encoded.iter().flatten().map(String::as_str));
        let reply = self.strings(&self.scripts.seed, &args).await?;
        match reply.as_slice() {
            [word, epoch, version] if word == "seeded" => Ok(SeedOutcome::Seeded {
                epoch: epoch.clone(),
                version: parse_u64(version, "version")?,
            }),
            [word, _] if word == "configured" => Ok(SeedOutcome::AlreadyConfigured),
            _ => Err(corrupt("seed reply", format!("{reply:?}"))),
        }
    }
}
