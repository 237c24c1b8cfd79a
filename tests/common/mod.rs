//! Running the built `attnlab` the way a hostile user would, but bounded:
//! under an address-space limit (`ulimit -v`, so a runaway allocation
//! aborts instead of swapping) and a wall-clock limit (the child is killed
//! past it), with stdout and stderr drained as it runs.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address space the child may map (KiB, as `ulimit -v` counts).
pub const ULIMIT_V_KIB: u64 = 4_000_000;

/// What one bounded run did.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status; `None` when a signal ended it (or the time limit).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Killed by the wall-clock limit.
    pub timed_out: bool,
    pub seconds: f64,
}

impl Outcome {
    /// No panic, no abort, no allocation failure, no signal.
    pub fn crashed(&self) -> bool {
        !self.timed_out
            && (self.code.is_none()
                || self.code == Some(101)
                || self.code == Some(134)
                || self.stderr.contains("panicked")
                || self.stderr.contains("memory allocation of"))
    }

    /// The `{"error": {"type", "message"}}` object printed with `--json`.
    pub fn json_error(&self) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(self.stdout.trim()).ok()?;
        let e = v.get("error")?;
        Some((
            e.get("type")?.as_str()?.to_string(),
            e.get("message")?.as_str()?.to_string(),
        ))
    }
}

/// `attnlab ARGS` under `ulimit -v` and `limit`, with `env` set (and every
/// `ATTNLAB_MAX_*` override of the caller's environment removed).
pub fn attnlab_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Outcome {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {ULIMIT_V_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ATTNLAB_MAX_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn sh");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// [`attnlab_env`] with no extra environment and a 60 s limit.
pub fn attnlab(args: &[&str]) -> Outcome {
    attnlab_env(args, &[], Duration::from_secs(60))
}

pub fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"))
}

/// One tensor of a safetensors file: (name, dtype, shape, bytes).
pub type Tensor = (String, String, Vec<u64>, Vec<u8>);

/// A safetensors file as its JSON header and tensors, edited and written back.
pub struct Fixture {
    pub header: serde_json::Map<String, serde_json::Value>,
    /// In data order.
    pub tensors: Vec<Tensor>,
}

impl Fixture {
    pub fn read(name: &str) -> Self {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut tensors: Vec<(u64, Tensor)> = header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let off: Vec<u64> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
                let tensor = (
                    k.clone(),
                    v["dtype"].as_str().unwrap().to_string(),
                    serde_json::from_value(v["shape"].clone()).unwrap(),
                    data[off[0] as usize..off[1] as usize].to_vec(),
                );
                (off[0], tensor)
            })
            .collect();
        tensors.sort();
        Fixture {
            header,
            tensors: tensors.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// Edits the `case` JSON of `__metadata__`.
    pub fn case(&mut self, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let meta = self.header["__metadata__"].as_object_mut().unwrap();
        let mut case: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(meta["case"].as_str().unwrap()).unwrap();
        f(&mut case);
        meta["case"] = serde_json::Value::String(serde_json::to_string(&case).unwrap());
    }

    /// Replaces (or adds) an I32 tensor.
    pub fn set_i32(&mut self, name: &str, shape: &[u64], values: &[i32]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = (name.to_string(), "I32".to_string(), shape.to_vec(), bytes);
        match self.tensors.iter_mut().find(|t| t.0 == name) {
            Some(old) => *old = t,
            None => self.tensors.push(t),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), self.header["__metadata__"].clone());
        let mut data: Vec<u8> = Vec::new();
        for (name, dtype, shape, bytes) in &self.tensors {
            let start = data.len();
            data.extend(bytes);
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        out
    }

    /// Writes the file to a fresh temporary path.
    pub fn write(&self, stem: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("attnlab-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{stem}.safetensors"));
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}
