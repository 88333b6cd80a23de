// Offline stand-in, part 1 of 2, for transformer-circuits.pub's jetpack_2024-07-20.js (not on npm), used only by
// tests/test_viewer.py. Load order: d3@7 -> this -> npm d3-jetpack@2.1.0 (build/d3-jetpack.js) -> jetpack-post.js.
// jetpack 2.1.0 overwrites d3.timer/interval/timeout with wrappers that call back into window.d3 (infinite
// recursion under d3 v7's single global namespace): save the originals.
window.__d3v7_saved = {timer: d3.timer, interval: d3.interval, timeout: d3.timeout}
