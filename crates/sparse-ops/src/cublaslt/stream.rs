//! Which CUDA stream cubecl-cuda launches a thread's kernels on, so that cuBLASLt can be queued on
//! the same stream (ordered for free, as in PyTorch) instead of on one of ours between host waits.
//!
//! cubecl 0.10 does not expose the stream (upstream cubecl#1613 asks for it). What it does give:
//! - `DeviceHandle::<Server>::submit(closure)` runs a closure on cubecl's device thread, in the
//!   same FIFO as kernel launches, without blocking the caller; inside it
//!   `server.get_resource(binding, stream_id)` gives a buffer's device address.
//! - The server's `Debug` output, which prints every stream's `sys: 0x...` handle.
//!
//! So the candidates are read from that dump, and the right one is confirmed by launching a
//! kernel that spins on a flag in device memory: while it spins, exactly one candidate answers
//! `cuStreamQuery` with `CUDA_ERROR_NOT_READY`. Then the flag is set and the kernel ends. This
//! depends on private details of cubecl-cuda (hence the exact `=0.10.0` pin in `Cargo.toml`); any
//! surprise (no candidate, none or several busy) makes [`cubecl_stream`] answer `None`, with one
//! warning, and the seam keeps its host-wait ordering.

use std::sync::Mutex;

use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::device::Device;
use cubecl::device_handle::DeviceHandle;
use cubecl::prelude::*;
use cubecl::server::ComputeServer;
use cubecl::stream_id::StreamId;
use cudarc::driver::sys as drvs;

/// cubecl-cuda's compute server, the state its device thread owns.
pub(crate) type Server = <CudaRuntime as Runtime>::Server;

/// Iterations after which the probe kernel stops spinning even if the flag was never set.
const SPIN_CAP: u32 = 200_000_000;

/// A device ordinal and a cubecl stream id (a thread's).
type StreamKey = (usize, u64);

/// Verified stream per key; `None` when verification failed.
static STREAMS: Mutex<Vec<(StreamKey, Option<u64>)>> = Mutex::new(Vec::new());

/// Device handles, one per device ordinal (creating one looks the device thread up).
static HANDLES: Mutex<Vec<(usize, DeviceHandle<Server>)>> = Mutex::new(Vec::new());

/// Whether the caller turned stream ordering off (`SPARSELORA_STREAM_ORDER=0`, for A/B runs).
fn disabled() -> bool {
    std::env::var("SPARSELORA_STREAM_ORDER").is_ok_and(|v| v == "0")
}

/// The handle through which closures run on `device`'s cubecl thread.
pub(crate) fn device_handle(device: &CudaDevice) -> DeviceHandle<Server> {
    let mut handles = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, handle)) = handles.iter().find(|(index, _)| *index == device.index) {
        return handle.clone();
    }
    let handle = DeviceHandle::<Server>::new(device.to_id());
    handles.push((device.index, handle.clone()));
    handle
}

/// The `CUstream` cubecl launches the calling thread's kernels on for `device`, verified once
/// per thread stream and device; `None` (after one warning) when it cannot be established.
pub(crate) fn cubecl_stream(device: &CudaDevice) -> Option<u64> {
    if disabled() {
        return None;
    }
    let key = (device.index, StreamId::current().value);
    {
        let streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, found)) = streams.iter().find(|(k, _)| *k == key) {
            return *found;
        }
    }
    // Not under the lock: discovery waits on cubecl's device thread.
    let found = match discover(device) {
        Ok(stream) => Some(stream),
        Err(reason) => {
            eprintln!(
                "warning: sparse-ops: cannot find cubecl's CUDA stream ({reason}); cuBLASLt GEMMs \
                 are ordered with host waits instead (slower)"
            );
            None
        }
    };
    STREAMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((key, found));
    found
}

/// Spins (one thread) until `flag[0] >= 1` or `cap` iterations; writes the count to `out[0]`.
#[cube(launch)]
fn spin_until_flag(flag: &Array<Atomic<u32>>, cap: u32, out: &mut Array<u32>) {
    if UNIT_POS == 0 {
        let mut i = 0u32;
        loop {
            if flag[0].load() >= 1u32 {
                break;
            }
            i += 1u32;
            if i >= cap {
                break;
            }
        }
        out[0] = i;
    }
}

/// Every `sys: 0x...` value in a `Debug` dump: the handles of cubecl-cuda's streams.
pub(crate) fn stream_candidates(dump: &str) -> Vec<u64> {
    let mut found = Vec::new();
    for (i, _) in dump.match_indices("sys: 0x") {
        let hex: String = dump[i + 7..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if let Ok(value) = u64::from_str_radix(&hex, 16) {
            if value != 0 && !found.contains(&value) {
                found.push(value);
            }
        }
    }
    found
}

fn discover(device: &CudaDevice) -> Result<u64, String> {
    let client = CudaRuntime::client(device);
    let sid = StreamId::current();
    let handle = device_handle(device);
    let flag = client.create_from_slice(&[0u8; 16]);
    let spins = client.create_from_slice(&[0u8; 4]);
    let call = |e| format!("device thread: {e:?}");

    let dump = handle
        .submit_blocking(move |server: &mut Server| {
            let _ = server.flush(sid);
            format!("{server:?}")
        })
        .map_err(call)?;
    let candidates = stream_candidates(&dump);
    if candidates.is_empty() {
        return Err("no stream handle in the server's Debug output".into());
    }
    let flag_ptr = client
        .get_resource(flag.clone())
        .map_err(|e| format!("flag buffer: {e:?}"))?
        .resource()
        .ptr;

    // SAFETY: both arrays are as long as the kernel reads and writes (4 and 1 elements).
    unsafe {
        spin_until_flag::launch::<CudaRuntime>(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            ArrayArg::from_raw_parts(flag.clone(), 4),
            SPIN_CAP,
            ArrayArg::from_raw_parts(spins.clone(), 1),
        );
    }
    let busy = handle
        .submit_blocking(move |server: &mut Server| {
            let _ = server.flush(sid);
            // SAFETY: querying a stream handle cubecl created and keeps alive; the flag is a
            // live 16-byte device buffer; the synchronous copy does not wait for cubecl's
            // non-blocking streams, so it reaches the spinning kernel.
            unsafe {
                let busy: Vec<u64> = candidates
                    .iter()
                    .copied()
                    .filter(|&c| {
                        drvs::cuStreamQuery(c as drvs::CUstream)
                            == drvs::CUresult::CUDA_ERROR_NOT_READY
                    })
                    .collect();
                let one: u32 = 1;
                let copied = drvs::cuMemcpyHtoD_v2(flag_ptr, (&one as *const u32).cast(), 4);
                (busy, copied)
            }
        })
        .map_err(call)?;
    let (busy, copied) = busy;
    if copied != drvs::CUresult::CUDA_SUCCESS {
        return Err(format!("releasing the probe kernel: {copied:?}"));
    }
    let bytes = client
        .read_one(spins)
        .map_err(|e| format!("reading the probe's spin count: {e:?}"))?;
    let spun = u32::from_le_bytes(
        bytes[..4]
            .try_into()
            .map_err(|_| "short spin count".to_owned())?,
    );
    match busy.as_slice() {
        [stream] if spun < SPIN_CAP => Ok(*stream),
        [_] => Err("the probe kernel was never released".into()),
        [] => Err("no candidate stream was busy while the probe kernel ran".into()),
        _ => Err(format!(
            "{} candidate streams were busy at once",
            busy.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_read_from_debug_output() {
        let dump =
            "Stream { sys: 0x5581aa, memory: .. } Stream { sys: 0x0 } Stream { sys: 0x5581aa } \
                    Stream { sys: 0xdeadbeef }";
        assert_eq!(stream_candidates(dump), vec![0x5581aa, 0xdeadbeef]);
        assert!(stream_candidates("nothing here").is_empty());
    }
}
