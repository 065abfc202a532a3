//! Builds the eBPF programs (ebpf/regedge-ebpf) with aya-build — nightly, `-Z
//! build-std=core`, bpfel-unknown-none, BTF — into OUT_DIR, where `datapath::object`
//! embeds them. Needs `bpf-linker` on PATH; `.ci/setup` installs it.
use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "regedge-ebpf";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not in the workspace"))?;
    let root_dir = package.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    // Rebuild when the kernel programs, the shared layouts or the linker change.
    let common_dir = root_dir.join("../regedge-common");
    for dir in [root_dir.join("src"), root_dir.join("Cargo.toml"), common_dir.join("src")] {
        println!("cargo:rerun-if-changed={dir}");
    }
    match which_bpf_linker() {
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        None => {
            anyhow::bail!("bpf-linker is not on PATH: run .ci/setup (it builds bpf-linker against the nightly's LLVM)")
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: EBPF_PACKAGE, root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join("bpf-linker"))
        .find(|p| p.is_file())
}
