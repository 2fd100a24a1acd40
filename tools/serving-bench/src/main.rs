//! `serving-bench`: the serving benchmark of the project's user guide (docs/user-guide.md), against the gateway or any
//! OpenAI-compatible server. Sends `--num-prompts` requests with Poisson arrivals at
//! `--request-rate` (`inf`: all at once), at most `--max-concurrency` in flight, and reports
//! throughput and TTFT / TPOT / ITL / end-to-end latency (mean, median, p99).
//!
//!   serving-bench --base-url http://127.0.0.1:8000/resource_server/v1/chat/completions \
//!       --model facebook/opt-125m --dataset-name sharegpt --dataset-path data.json \
//!       --num-prompts 100 --output-file results.jsonl
//!   serving-bench make-dataset --num 500 --output sharegpt.json

mod dataset;
mod report;
mod request;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use dataset::{Prompt, Rng};
use request::Target;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DatasetName {
    Sharegpt,
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    /// Request shape from the URL: `.../chat/completions` → chat, else completions.
    Vllm,
    Openai,
    OpenaiChat,
    OpenaiCompletions,
}

#[derive(Debug, Parser)]
#[command(
    name = "serving-bench",
    about = "Serving benchmark for OpenAI-compatible endpoints (TTFT, TPOT, ITL, throughput)"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Full endpoint URL, e.g. http://127.0.0.1:8000/resource_server/v1/chat/completions.
    #[arg(long)]
    base_url: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value = "vllm")]
    backend: Backend,
    #[arg(long, value_enum, default_value = "sharegpt")]
    dataset_name: DatasetName,
    /// ShareGPT-format JSON (required with --dataset-name sharegpt).
    #[arg(long)]
    dataset_path: Option<String>,
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Requests per second (Poisson arrivals), or `inf` to send all at once.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// At most this many requests in flight.
    #[arg(long)]
    max_concurrency: Option<usize>,
    #[arg(long)]
    disable_stream: bool,
    #[arg(long)]
    disable_ssl_verification: bool,
    /// Append one JSON result record to this file.
    #[arg(long)]
    output_file: Option<String>,
    #[arg(long, default_value_t = 1024)]
    random_input_len: u64,
    #[arg(long, default_value_t = 128)]
    random_output_len: u64,
    /// Ask the server to generate exactly max_tokens (vLLM's ignore_eos).
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic ShareGPT-format dataset (no download needed).
    MakeDataset {
        #[arg(long, default_value_t = 500)]
        num: usize,
        #[arg(long)]
        output: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn fail(message: String) -> ExitCode {
    eprintln!("serving-bench: {message}");
    ExitCode::from(2)
}

#[expect(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing: the summary is an object built by report::summarize"
)]
fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::MakeDataset { num, output, seed }) = &args.command {
        let data = dataset::synthetic_sharegpt(*num, &mut Rng::new(*seed + 1));
        let written = serde_json::to_vec_pretty(&data)
            .map_err(|e| e.to_string())
            .and_then(|bytes| std::fs::write(output, bytes).map_err(|e| format!("{output}: {e}")));
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    let (Some(url), Some(model)) = (args.base_url.clone(), args.model.clone()) else {
        return fail("--base-url and --model are required".into());
    };
    let rate = match args.request_rate.as_str() {
        "inf" => f64::INFINITY,
        text => match text.parse::<f64>() {
            Ok(r) if r > 0.0 => r,
            _ => {
                return fail(format!(
                    "--request-rate `{text}` is not a positive number or `inf`"
                ))
            }
        },
    };
    let mut rng = Rng::new(args.seed + 1);
    let prompts = match args.dataset_name {
        DatasetName::Random => dataset::random(
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            &mut rng,
        ),
        DatasetName::Sharegpt => match &args.dataset_path {
            Some(path) => match dataset::sharegpt(path, args.num_prompts, &mut rng) {
                Ok(p) => p,
                Err(e) => return fail(e),
            },
            None => return fail("--dataset-path is required with --dataset-name sharegpt".into()),
        },
    };
    let chat = match args.backend {
        Backend::OpenaiChat => true,
        Backend::OpenaiCompletions => false,
        Backend::Vllm | Backend::Openai => url.trim_end_matches('/').ends_with("/chat/completions"),
    };
    let http = match reqwest::Client::builder()
        .danger_accept_invalid_certs(args.disable_ssl_verification)
        .pool_max_idle_per_host(args.max_concurrency.unwrap_or(1024))
        .timeout(Duration::from_secs(6 * 3600))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("HTTP client: {e}")),
    };
    let target = Arc::new(Target {
        http,
        url,
        model,
        chat,
        stream: !args.disable_stream,
        token: std::env::var("OPENAI_API_KEY")
            .or_else(|_| std::env::var("MY_TOKEN"))
            .ok(),
        ignore_eos: args.ignore_eos,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    let mut summary = runtime.block_on(run(
        target,
        prompts,
        rate,
        args.max_concurrency,
        args.quiet,
        &mut rng,
    ));
    summary["backend"] = format!("{:?}", args.backend).to_lowercase().into();
    summary["model"] = args.model.clone().into();
    summary["base_url"] = args.base_url.clone().into();
    summary["num_prompts"] = args.num_prompts.into();
    summary["request_rate"] = args.request_rate.clone().into();
    summary["max_concurrency"] = args.max_concurrency.into();
    summary["stream"] = (!args.disable_stream).into();
    summary["dataset_name"] = format!("{:?}", args.dataset_name).to_lowercase().into();
    summary["date"] = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .into();
    report::print(&summary);
    if let Some(path) = &args.output_file {
        let line = format!("{summary}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            return fail(format!("--output-file {path}: {e}"));
        }
    }
    if summary["completed"].as_u64() == Some(0) {
        return fail("no request succeeded".into());
    }
    ExitCode::SUCCESS
}

async fn run(
    target: Arc<Target>,
    prompts: Vec<Prompt>,
    rate: f64,
    max_concurrency: Option<usize>,
    quiet: bool,
    rng: &mut Rng,
) -> serde_json::Value {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(prompts.len() as u64)
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        max_concurrency.unwrap_or(usize::MAX >> 4),
    ));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        if rate.is_finite() {
            tokio::time::sleep(Duration::from_secs_f64(rng.exponential(rate))).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let target = target.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = target.send(&prompt).await;
            drop(permit);
            bar.inc(1);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    bar.finish_and_clear();
    report::summarize(&outcomes, started.elapsed())
}
