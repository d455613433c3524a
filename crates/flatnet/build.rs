//! Link the `flatnet` executable position-dependent: runtimes exec it as the CNI plugin
//! for every pod, and a PIE of this size spends a noticeable part of each run applying
//! tens of thousands of load-time relocations (and faulting in the pages they touch).
fn main() {
    println!("cargo:rustc-link-arg-bin=flatnet=-no-pie");
}
