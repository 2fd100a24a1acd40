//! Limit state in Redis, shared by every gateway replica. Each operation is one Lua script,
//! so checking and recording are atomic across replicas, and time is Redis's own clock so
//! replicas with skewed clocks agree. Keys expire when idle.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{Check, Decision, Kind, Store, StoreError};
use crate::gcra::Verdict;

/// KEYS: the limit keys. ARGV: per key, kind ("r" rate / "c" concurrency), limit, cost.
/// Returns {1, remaining1, reset1, ...} or {0, index, retry_after}; floats as strings.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = 60.0
local next_values = {}
local out = {1}
for i = 1, #KEYS do
  local kind = ARGV[(i - 1) * 3 + 1]
  local limit = tonumber(ARGV[(i - 1) * 3 + 2])
  local cost = tonumber(ARGV[(i - 1) * 3 + 3])
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if kind == 'c' then
    if current >= limit then return {0, i - 1, '1'} end
    next_values[i] = current + 1
    table.insert(out, tostring(limit - current - 1))
    table.insert(out, '0')
  else
    local period = window / math.max(limit, 1)
    cost = math.min(cost, math.max(limit, 1))
    local new_tat = math.max(current, now) + cost * period
    local wait = new_tat - now - window
    if wait > 1e-9 then return {0, i - 1, tostring(wait)} end
    next_values[i] = new_tat
    table.insert(out, tostring(math.max(math.floor((window - (new_tat - now)) / period + 1e-9), 0)))
    table.insert(out, tostring(new_tat - now))
  end
end
for i = 1, #KEYS do
  local kind = ARGV[(i - 1) * 3 + 1]
  if kind == 'c' then
    redis.call('SET', KEYS[i], next_values[i], 'EX', 600)
  else
    local ttl = math.ceil((next_values[i] - now) * 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.6f', next_values[i]), 'PX', ttl)
  end
end
return out
"#;

/// KEYS: the budgets to settle, then the concurrency keys to release.
/// ARGV: number of budgets, delta, then each budget's limit.
const FINISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budgets = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
for i = 1, budgets do
  if delta ~= 0 then
    local period = 60.0 / math.max(tonumber(ARGV[2 + i]), 1)
    local tat = tonumber(redis.call('GET', KEYS[i]) or tostring(now))
    local new_tat
    if delta >= 0 then new_tat = math.max(tat, now) + delta * period
    else new_tat = math.max(tat + delta * period, now) end
    local ttl = math.ceil((new_tat - now) * 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.6f', new_tat), 'PX', ttl)
  end
end
for i = budgets + 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 1 then redis.call('SET', KEYS[i], n - 1, 'EX', 600) else redis.call('DEL', KEYS[i]) end
end
return 1
"#;

pub struct RedisStore {
    connection: ConnectionManager,
    acquire: Script,
    finish: Script,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// Connects (bounded by `timeout`); afterwards the connection manager reconnects by itself.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err)?;
        Ok(RedisStore {
            connection,
            acquire: Script::new(ACQUIRE),
            finish: Script::new(FINISH),
        })
    }
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or_default()
}

#[async_trait]
impl Store for RedisStore {
    async fn acquire(&self, checks: &[Check]) -> Result<Decision, StoreError> {
        let mut invocation = self.acquire.prepare_invoke();
        for check in checks {
            invocation.key(&check.key);
            let kind = if check.kind == Kind::Concurrency {
                "c"
            } else {
                "r"
            };
            invocation.arg(kind).arg(check.limit).arg(check.cost);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(err)?;
        let text = |v: &redis::Value| -> String {
            match v {
                redis::Value::Int(i) => i.to_string(),
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            }
        };
        match reply.first().map(text).as_deref() {
            Some("1") => {
                let verdicts = reply[1..]
                    .chunks(2)
                    .map(|pair| Verdict::Admit {
                        remaining: number(&text(&pair[0])) as u64,
                        reset: pair.get(1).map(|v| number(&text(v))).unwrap_or_default(),
                    })
                    .collect();
                Ok(Decision::Admitted(verdicts))
            }
            Some("0") if reply.len() == 3 => Ok(Decision::Refused {
                index: number(&text(&reply[1])) as usize,
                retry_after: number(&text(&reply[2])),
            }),
            _ => Err(StoreError(format!(
                "unexpected reply from the limit script: {reply:?}"
            ))),
        }
    }

    async fn finish(
        &self,
        budgets: &[(String, u64)],
        delta: i64,
        slots: &[String],
    ) -> Result<(), StoreError> {
        if slots.is_empty() && (budgets.is_empty() || delta == 0) {
            return Ok(());
        }
        let mut invocation = self.finish.prepare_invoke();
        invocation.arg(budgets.len()).arg(delta);
        for (key, limit) in budgets {
            invocation.key(key).arg(*limit);
        }
        for key in slots {
            invocation.key(key);
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(err)?;
        Ok(())
    }
}
