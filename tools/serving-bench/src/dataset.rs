//! Prompts for the benchmark: a ShareGPT-format file, or random ones of fixed lengths.

use serde::{Deserialize, Serialize};

/// One benchmark request: its prompt, a token estimate of it, and the tokens to generate.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Deserialize, Serialize)]
pub struct Conversation {
    #[serde(default)]
    pub id: String,
    pub conversations: Vec<Turn>,
}

#[derive(Deserialize, Serialize)]
pub struct Turn {
    pub from: String,
    pub value: String,
}

/// Four characters a token: the usual estimate without a tokenizer.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64 / 4).max(1)
}

/// The first human turn of each conversation, with the reply's length as the output length
/// (clamped to 4..=1024 tokens), as the common serving benchmarks do.
pub fn sharegpt(path: &str, n: usize, rng: &mut Rng) -> Result<Vec<Prompt>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--dataset-path {path}: {e}"))?;
    let conversations: Vec<Conversation> = serde_json::from_str(&text)
        .map_err(|e| format!("--dataset-path {path}: not ShareGPT JSON: {e}"))?;
    let mut usable: Vec<Prompt> = conversations
        .iter()
        .filter_map(|c| {
            let human = c.conversations.iter().position(|t| t.from == "human")?;
            let reply = c.conversations.get(human + 1).filter(|t| t.from == "gpt")?;
            let prompt = &c.conversations.get(human)?.value;
            Some(Prompt {
                text: prompt.clone(),
                input_tokens: estimate_tokens(prompt),
                output_tokens: estimate_tokens(&reply.value).clamp(4, 1024),
            })
        })
        .collect();
    if usable.is_empty() {
        return Err(format!("--dataset-path {path}: no human/gpt turn pairs"));
    }
    rng.shuffle(&mut usable);
    // Reuse prompts when the file has fewer than asked for.
    Ok(usable.iter().cycle().take(n).cloned().collect())
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "gateway",
    "token",
    "stream",
    "cluster",
    "inference",
    "science",
    "data",
    "compute",
    "energy",
    "physics",
    "protein",
    "climate",
    "simulation",
    "network",
    "memory",
    "latency",
    "batch",
    "queue",
];

fn words(rng: &mut Rng, tokens: u64) -> String {
    // About one token a word plus its space.
    (0..tokens)
        .filter_map(|_| WORDS.get(rng.below(WORDS.len() as u64) as usize).copied())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn random(n: usize, input_len: u64, output_len: u64, rng: &mut Rng) -> Vec<Prompt> {
    (0..n)
        .map(|_| Prompt {
            text: words(rng, input_len),
            input_tokens: input_len,
            output_tokens: output_len,
        })
        .collect()
}

/// A synthetic ShareGPT-format file of `n` conversations with varied lengths, for runs
/// without a download.
pub fn synthetic_sharegpt(n: usize, rng: &mut Rng) -> Vec<Conversation> {
    (0..n)
        .map(|i| {
            let ask = 8 + rng.below(300);
            let answer = 16 + rng.below(400);
            Conversation {
                id: format!("synthetic-{i}"),
                conversations: vec![
                    Turn {
                        from: "human".into(),
                        value: words(rng, ask),
                    },
                    Turn {
                        from: "gpt".into(),
                        value: words(rng, answer),
                    },
                ],
            }
        })
        .collect()
}

/// A small deterministic generator (xorshift64*): reproducible runs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Exponential inter-arrival time for a Poisson process of `rate` per second.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
}
