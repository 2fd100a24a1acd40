//! Limit state in Redis, shared by every gateway replica. Each operation is one Lua script,
//! so checking and recording are atomic across replicas, and time is Redis's own clock so
//! replicas with skewed clocks agree. Budgets expire when idle.
//!
//! Concurrency slots are leases: a sorted set per key of holder → expiry (ms). A request
//! refreshes its leases while it runs (a stream may outlive any fixed TTL) and removes them
//! when it ends; a replica that dies stops refreshing, and its slots expire within one lease.
//!
//! Every key of one request starts with the same `{prefix}` hash tag, so the scripts work on
//! Redis Cluster too (a script's keys must share a slot).
//!
//! Scripts only see bounded integers (limits, costs and deltas within `MAX_LIMIT`; stored
//! states clamped to one window ahead), and any reply other than the expected shape is an
//! error, never a panic.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Script, Value};

use super::{Check, Decision, Key, Kind, Settle, Store, StoreError};
use crate::gcra::CheckOutcome;

/// KEYS: the limit keys. ARGV: holder, lease ms, then per key: kind ("r" rate /
/// "c" concurrency), limit, cost.
/// Returns {1, remaining1, reset1, ...} or {0, index, retry_after}; floats as strings.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60.0
local holder = ARGV[1]
local lease = tonumber(ARGV[2])
local next_values = {}
local out = {1}
for i = 1, #KEYS do
  local kind = ARGV[(i - 1) * 3 + 3]
  local limit = tonumber(ARGV[(i - 1) * 3 + 4])
  local cost = tonumber(ARGV[(i - 1) * 3 + 5])
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
    local held = redis.call('ZCARD', KEYS[i])
    if held >= limit then return {0, i - 1, '1'} end
    table.insert(out, tostring(limit - held - 1))
    table.insert(out, '0')
  else
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat == nil or tat ~= tat then tat = now end
    tat = math.min(math.max(tat, now), now + window)
    local period = window / limit
    local new_tat = tat + math.min(cost, limit) * period
    local wait = new_tat - now - window
    if wait > 1e-9 then return {0, i - 1, tostring(wait)} end
    next_values[i] = new_tat
    table.insert(out, tostring(math.max(math.floor((window - (new_tat - now)) / period + 1e-9), 0)))
    table.insert(out, tostring(new_tat - now))
  end
end
for i = 1, #KEYS do
  if ARGV[(i - 1) * 3 + 3] == 'c' then
    redis.call('ZADD', KEYS[i], now_ms + lease, holder)
    if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
  else
    local ttl = math.ceil((next_values[i] - now) * 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.6f', next_values[i]), 'PX', ttl)
  end
end
return out
"#;

/// KEYS: the budgets to settle, then the concurrency keys to release.
/// ARGV: holder, number of budgets, then per budget: limit, delta.
const FINISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = 60.0
local budgets = tonumber(ARGV[2])
for i = 1, budgets do
  local limit = tonumber(ARGV[1 + i * 2])
  local delta = tonumber(ARGV[2 + i * 2])
  if delta ~= 0 then
    local period = window / limit
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat == nil or tat ~= tat then tat = now end
    tat = math.min(math.max(tat, now), now + window)
    local new_tat = math.min(math.max(tat + delta * period, now), now + window)
    if new_tat > now then
      local ttl = math.ceil((new_tat - now) * 1000) + 1000
      redis.call('SET', KEYS[i], string.format('%.6f', new_tat), 'PX', ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for i = budgets + 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
"#;

/// KEYS: the concurrency keys a request holds. ARGV: holder, lease ms.
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], now_ms + lease, ARGV[1])
    if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
  end
end
return 1
"#;

/// A single Redis server (reconnecting by itself), or a Redis Cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisStore {
    connection: Connection,
    lease: Duration,
    acquire: Script,
    finish: Script,
    refresh: Script,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// Connects (bounded by `timeout`); afterwards the connection reconnects by itself.
    /// With `cluster`, `url` is a seed node of a Redis Cluster.
    pub async fn connect(
        url: &str,
        cluster: bool,
        timeout: Duration,
        lease: Duration,
    ) -> Result<RedisStore, StoreError> {
        let connection = if cluster {
            let client = ClusterClientBuilder::new(vec![url])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(err)?;
            let connecting = client.get_async_connection();
            let connection = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| StoreError(format!("no answer from the cluster within {timeout:?}")))?
                .map_err(err)?;
            Connection::Cluster(connection)
        } else {
            let client = redis::Client::open(url).map_err(err)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout)
                .set_number_of_retries(1);
            Connection::Single(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(err)?,
            )
        };
        Ok(RedisStore {
            connection,
            lease,
            acquire: Script::new(ACQUIRE),
            finish: Script::new(FINISH),
            refresh: Script::new(REFRESH),
        })
    }

    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        match self.connection.clone() {
            Connection::Single(mut c) => invoke(invocation, &mut c).await,
            Connection::Cluster(mut c) => invoke(invocation, &mut c).await,
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }
}

async fn invoke<C: ConnectionLike + Send + Sync>(
    invocation: redis::ScriptInvocation<'_>,
    connection: &mut C,
) -> Result<Value, StoreError> {
    invocation.invoke_async(connection).await.map_err(err)
}

fn unexpected(reply: &Value) -> StoreError {
    StoreError(format!("unexpected reply from a limit script: {reply:?}"))
}

/// A number the scripts return as an integer or as a string.
fn number(value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Int(i) => Some(*i as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.filter(|n: &f64| n.is_finite())
}

/// Reads the acquire script's reply for `checks` checks; anything else is an error.
fn decision(reply: &Value, checks: usize) -> Result<Decision, StoreError> {
    let Value::Array(items) = reply else {
        return Err(unexpected(reply));
    };
    let Some((status, rest)) = items.split_first() else {
        return Err(unexpected(reply));
    };
    match (number(status).map(|s| s as i64), rest) {
        (Some(1), _) if rest.len() == checks * 2 => rest
            .chunks_exact(2)
            .map(|pair| match pair {
                [remaining, reset] => match (number(remaining), number(reset)) {
                    (Some(remaining), Some(reset)) if remaining >= 0.0 && reset >= 0.0 => {
                        Ok(CheckOutcome::Admit {
                            remaining: remaining as u64,
                            reset,
                        })
                    }
                    _ => Err(unexpected(reply)),
                },
                _ => Err(unexpected(reply)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Decision::Admitted),
        (Some(0), [index, wait]) => match (number(index), number(wait)) {
            (Some(index), Some(retry_after))
                if index >= 0.0 && (index as usize) < checks && retry_after >= 0.0 =>
            {
                Ok(Decision::Refused {
                    index: index as usize,
                    retry_after,
                })
            }
            _ => Err(unexpected(reply)),
        },
        _ => Err(unexpected(reply)),
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn acquire(&self, checks: &[Check], holder: &str) -> Result<Decision, StoreError> {
        let mut invocation = self.acquire.prepare_invoke();
        invocation.arg(holder).arg(self.lease_ms());
        for check in checks {
            invocation.key(&*check.key);
            let kind = match check.kind {
                Kind::Concurrency => "c",
                Kind::Rate => "r",
            };
            invocation
                .arg(kind)
                .arg(check.limit.max(1))
                .arg(check.cost.min(check.limit));
        }
        let reply = self.run(invocation).await?;
        decision(&reply, checks.len())
    }

    async fn finish(
        &self,
        budgets: &[Settle],
        slots: &[Key],
        holder: &str,
    ) -> Result<(), StoreError> {
        let budgets: Vec<&Settle> = budgets.iter().filter(|b| b.delta != 0).collect();
        if slots.is_empty() && budgets.is_empty() {
            return Ok(());
        }
        let mut invocation = self.finish.prepare_invoke();
        invocation.arg(holder).arg(budgets.len());
        for budget in &budgets {
            let limit = budget.limit.max(1);
            let bound = i64::try_from(limit).unwrap_or(i64::MAX);
            invocation
                .key(&*budget.key)
                .arg(limit)
                .arg(budget.delta.clamp(-bound, bound));
        }
        for key in slots {
            invocation.key(&**key);
        }
        match self.run(invocation).await? {
            Value::Int(1) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn lease_refresh_interval(&self) -> Option<Duration> {
        Some(self.lease / 3)
    }

    async fn refresh(&self, slots: &[Key], holder: &str) -> Result<(), StoreError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut invocation = self.refresh.prepare_invoke();
        invocation.arg(holder).arg(self.lease_ms());
        for key in slots {
            invocation.key(&**key);
        }
        match self.run(invocation).await? {
            Value::Int(1) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn replies_of_the_expected_shape_are_read() {
        let admitted = Value::Array(vec![Value::Int(1), s("4"), s("12.5"), s("0"), s("0")]);
        assert_eq!(
            decision(&admitted, 2).ok(),
            Some(Decision::Admitted(vec![
                CheckOutcome::Admit {
                    remaining: 4,
                    reset: 12.5
                },
                CheckOutcome::Admit {
                    remaining: 0,
                    reset: 0.0
                },
            ]))
        );
        let refused = Value::Array(vec![Value::Int(0), Value::Int(1), s("2.5e-1")]);
        assert_eq!(
            decision(&refused, 2).ok(),
            Some(Decision::Refused {
                index: 1,
                retry_after: 0.25
            })
        );
    }

    #[test]
    fn any_other_reply_is_an_error_not_a_panic() {
        for reply in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), s("4")]),
            Value::Array(vec![Value::Int(1), s("4"), s("x")]),
            Value::Array(vec![Value::Int(1), s("-4"), s("1")]),
            Value::Array(vec![Value::Int(0), Value::Int(7), s("1")]),
            Value::Array(vec![Value::Int(0), Value::Int(-1), s("1")]),
            Value::Array(vec![Value::Int(0), Value::Int(0), s("NaN")]),
            Value::Array(vec![Value::Int(2), Value::Int(0), s("1")]),
            Value::Array(vec![s("1"), Value::Nil, Value::Nil]),
        ] {
            assert!(decision(&reply, 1).is_err(), "{reply:?}");
        }
    }
}
