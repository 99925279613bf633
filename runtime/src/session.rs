//! Placeholder for the session: being implemented.
//!
//! CONTRACT:
//! pub struct SessionOptions { pub threads: usize }            // Default: threads = 1
//! pub struct Session { .. }                                    // owns Arc<PithFile>, ops, current plan, arena
//! impl Session {
//!     pub fn new(model: Arc<PithFile>, options: SessionOptions) -> Result<Session>;  // builds every op (errors name the node)
//!     pub fn model(&self) -> &PithFile;
//!     pub fn inputs(&self) -> Vec<&Value>;  pub fn outputs(&self) -> Vec<&Value>;
//!     pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>>;  // outputs in graph order
//!     pub fn plan(&mut self, input_shapes: &[(&str, Vec<usize>)]) -> Result<PlanSummary>; // (re)plans; run() calls it when shapes change
//! }
//! pub struct PlanSummary { pub arena_bytes: usize, pub values: usize, pub runtime_nodes: usize, pub folded_nodes: usize }
