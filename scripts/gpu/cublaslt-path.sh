# Sourced by the GPU scripts: puts libcublasLt on the loader's path when it is not there already
# (the CUDA toolkit's copy, else the one in pip's nvidia-cublas wheel, which PyTorch uses).
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then
  cublaslt_dir=$(python3 - <<'PY'
import glob, os, site, sys
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
for base in site.getsitepackages() + [site.getusersitepackages()]:
    roots += glob.glob(os.path.join(base, "nvidia", "**", "lib"), recursive=True)
    roots.append(os.path.join(base, "torch", "lib"))
for root in roots:
    if glob.glob(os.path.join(root, "libcublasLt.so*")):
        print(root)
        sys.exit()
PY
)
  if [ -n "$cublaslt_dir" ]; then
    export LD_LIBRARY_PATH="$cublaslt_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  echo "libcublasLt from ${cublaslt_dir:-nowhere found}"
fi
