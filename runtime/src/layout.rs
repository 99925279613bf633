//! Which activations run in the channel-blocked layout (NCHW16c, [`pith_kernels::blocked`]).
//!
//! Chains of 1×1 and depthwise convolutions over small planes (MobileNets' 28×28, 14×14 and 7×7
//! stages, squeeze-excite blocks included, and a stride-2 block from 56×56 into them) run
//! faster with their activations blocked: the
//! depthwise layers need no lanes past a short row and no transposes, the 1×1 layers no masked
//! pixel tails. A value is blocked when:
//!
//! * it is a batch-1, 4-D f32 activation of whole 16-channel blocks over a plane of
//!   [`MIN_PLANE`] to [`MAX_PLANE`] pixels, neither a graph input nor a graph output;
//! * the node that writes it and every node that reads it can take it blocked
//!   ([`Op::blocked_use`]): a 1×1 convolution reads and writes either layout (so the edges of
//!   a blocked region convert for free, inside the 1×1 layers' tiles, and one leaving a region
//!   may have a ragged last block of output channels), a depthwise convolution needs both sides
//!   blocked, a residual added in a convolution shares its output's layout, and in a
//!   squeeze-excite block a global average pool reads the value blocked and the product with
//!   the per-channel gate keeps its layout;
//! * over a plane under [`SMALL_PLANE`] pixels (7×7), it belongs to a depthwise layer whose work
//!   pays for the weights of the 1×1 layers next to it, or to a stream between 1×1 layers none
//!   of which touches a depthwise layer that does not ([`SMALL_PLANE_WEIGHT_COST`]);
//! * its region (the blocked values connected through the layers between them) pays: its
//!   depthwise layers' work, weighted by [`DEPTHWISE_GAIN_WEIGHT`], exceeds that of the 1×1
//!   layers at its edges (those over planes above [`LARGE_PLANE`] counted
//!   [`LARGE_PLANE_EDGE_COST`] times).
//!
//! Planar everywhere else, so every other op is untouched. Off where the kernel path has no
//! blocked kernels or the session runs int8 activations (whose 1×1 kernels are planar).

use pith_format::ir::{ElemType, Graph};
use pith_kernels::Kernels;

use crate::ops::{Arg, BlockedUse, NodeLayouts, Op};
use crate::plan::{plan_arg, ConstantFn, Plan, Slot};

/// Fewest pixels of a blocked plane: 7×7, MobileNets' last stage, where a blocked depthwise
/// layer takes 0.43-0.66 of its planar time (Zen 5, 1 thread: MobileNetV2's 960 channels 20.5 →
/// 13.4 µs, its stride-2 layer into 7×7 23.8 → 10.2, MobileNetV3-Small's 5×5 ones 20.5 → 13.5).
/// Planes under [`SMALL_PLANE`] are blocked only around depthwise layers that pay for the 1×1
/// layers next to them ([`SMALL_PLANE_WEIGHT_COST`]).
pub const MIN_PLANE: usize = 49;

/// Planes under this many pixels are *small*: a 1×1 layer over one runs slower blocked, its
/// filters transposed once per call for few pixels (Zen 5, 1 thread: MobileNetV2's 960 → 320
/// over 7×7 134.6 → 160.2 µs, 320 → 1280 196.1 → 218.3; the Xeon of the twenty-second session
/// measured 960 → 320 0.25-0.27 → 0.33-0.34 ms), by a cost in proportion to its weights.
pub const SMALL_PLANE: usize = 100;

/// A depthwise layer over a small plane runs blocked (with the values tied to it) only when its
/// multiply-adds are at least this many times the weights of the 1×1 layers over small planes
/// that read or write those values. Measured (Zen 5, 1 thread, all-or-nothing over the 7×7
/// stage): MobileNetV3-Small's 5×5 layers (ratio of weights to multiply-adds 0.16) and stride-2
/// layers into 7×7 (0.08; MobileNetV2's 0.36) gain, each with the 1×1 layer before it no longer
/// converting its output back to planar (14.6 and 10.3 µs); MobileNetV2's 3×3 layers between
/// 160-channel 1×1 layers (0.73) lose (7 µs saved against 3 + 12.4 lost in their neighbours).
pub const SMALL_PLANE_WEIGHT_COST: usize = 2;

/// How many 1×1 multiply-adds a depthwise multiply-add run blocked saves, for the rule that
/// keeps a region only where its depthwise layers outweigh the 1×1 layers at its edges (a region
/// pays when its edges' multiply-adds are below this many times its depthwise ones). With the
/// depthwise row tiles (Zen 5, the thirtieth session) a blocked depthwise layer takes 0.37-0.48
/// of its planar time, a blocked 1×1 layer 0.98-1.09 of its own, and one leaving a region into
/// 40 channels 1.26 (criterion and per-node profiles, 1 thread). Measured regions, as
/// edge ÷ depthwise multiply-adds: MobileNetV2's one region 1.9 (kept: the model 0.98 of its
/// planar time on the Xeon); MobileNetV3-Small's squeeze-excite blocks 3.2 (×2) and 5.4 (×2:
/// kept with 6, the model 0.98-0.99 of its time without them); PP-OCRv4 det's one over 10×20 at
/// 320×640 7.4 (dropped: 1.00-1.04 of its time with it, here and on the Xeon).
pub const DEPTHWISE_GAIN_WEIGHT: usize = 6;

/// Most pixels of a blocked plane: the kernels' own limit (56×56; larger planes fill the
/// planar kernels' vectors).
pub const MAX_PLANE: usize = pith_kernels::blocked::MAX_PLANE;

/// Planes over this many pixels (28×28) are *large*: there a 1×1 layer at a region's edge costs
/// more blocked than on smaller planes, and the region rule counts its multiply-adds
/// [`LARGE_PLANE_EDGE_COST`] times. Zen 5, 1 thread, per node: MobileNetV2's 24 → 144 expansion
/// over 56×56 writing blocked 95 → 103 µs, its 144 → 24 projection reading blocked (a ragged
/// exit) 90 → 130 µs, against 79.6 → 46.6 µs for the depthwise layer between them.
pub const LARGE_PLANE: usize = 28 * 28;

/// How many times a 1×1 layer over a large plane ([`LARGE_PLANE`]) at a region's edge counts
/// in the region rule ([`DEPTHWISE_GAIN_WEIGHT`]). With it MobileNetV2's stride-1 block over 56×56
/// stays planar (its edges weigh 43 M against 24 M of depthwise gain) and its stride-2 block into
/// 28×28 joins the blocked region after it.
pub const LARGE_PLANE_EDGE_COST: usize = 2;

/// Works out which values of `plan` are blocked and records each node's layouts in
/// `plan.node_layouts` (and their count in `plan.summary`); leaves the plan all planar where `kernels` have no blocked kernels or run
/// int8 activations.
pub fn assign(
    graph: &Graph,
    constant: &ConstantFn<'_>,
    ops: &[Box<dyn Op>],
    plan: &mut Plan,
    kernels: &Kernels,
) {
    plan.node_layouts.clear();
    plan.summary.blocked_values = 0;
    // The blocked kernels have no int8 products: int8 sessions keep their 1×1 layers planar,
    // where those kernels are. bf16 sessions keep the layout where its 1×1 kernels take bf16
    // products (a blocked input), and stay planar where they do not.
    let bf16_blocked = kernels.isa().blocked.is_some_and(|b| b.bf16.is_some());
    if kernels.isa().blocked.is_none()
        || kernels.int8_activations()
        || (kernels.bf16_products() && !bf16_blocked)
    {
        return;
    }
    let uses: Vec<Option<BlockedUse>> = (0..graph.nodes.len())
        .map(|ni| {
            if !plan.steps.contains(&ni) {
                return None;
            }
            let node = &graph.nodes[ni];
            let args: Vec<Option<Arg<'_>>> =
                node.inputs.iter().map(|i| i.map(|id| plan_arg(&plan.values, constant, id))).collect();
            ops[ni].blocked_use(&args, kernels)
        })
        .collect();
    let mut blocked: Vec<bool> = (0..plan.values.len()).map(|id| candidate(graph, plan, id)).collect();
    // The node that writes each value (among the steps).
    let mut writer = vec![None; plan.values.len()];
    for &ni in &plan.steps {
        for (k, &id) in graph.nodes[ni].outputs.iter().enumerate() {
            writer[id as usize] = Some((ni, k));
        }
    }
    for (id, b) in blocked.iter_mut().enumerate() {
        *b = *b && matches!(writer[id], Some((ni, 0)) if uses[ni].is_some());
    }
    // Every reader must take the value where it reads it: nodes folded out of the steps (views
    // sharing the value's buffer, concatenations written in place) take nothing blocked.
    for (ni, node) in graph.nodes.iter().enumerate() {
        for (pos, id) in node.inputs.iter().enumerate() {
            let Some(id) = *id else { continue };
            let takes = match uses[ni] {
                Some(BlockedUse::Free { residual }) => pos == 0 || residual == Some(pos),
                Some(BlockedUse::Tied { input, .. }) => pos == input,
                Some(BlockedUse::Reads) => pos == 0,
                None => false,
            };
            if !takes {
                blocked[id as usize] = false;
            }
        }
    }
    keep_small_planes_that_pay(graph, plan, &uses, &mut blocked);
    // Values that must share a layout: a depthwise layer's input and output, a residual and
    // its convolution's output. Unblock both of a pair that disagrees until none does.
    loop {
        let mut changed = false;
        for &ni in &plan.steps {
            let node = &graph.nodes[ni];
            let pair = match uses[ni] {
                Some(BlockedUse::Tied { input, .. }) => node.inputs.get(input).copied().flatten(),
                Some(BlockedUse::Free { residual: Some(r) }) => node.inputs.get(r).copied().flatten(),
                _ => None,
            };
            if let (Some(a), Some(&b)) = (pair, node.outputs.first()) {
                let (a, b) = (a as usize, b as usize);
                if blocked[a] != blocked[b] {
                    (blocked[a], blocked[b]) = (false, false);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    drop_unpaid_regions(graph, plan, &uses, &mut blocked);
    let bits = |ids: &mut dyn Iterator<Item = Option<u32>>| {
        ids.enumerate().take(32).fold(0u32, |m, (i, id)| match id {
            Some(id) if blocked[id as usize] => m | 1 << i,
            _ => m,
        })
    };
    let layouts: Vec<NodeLayouts> = graph
        .nodes
        .iter()
        .map(|node| NodeLayouts {
            inputs: bits(&mut node.inputs.iter().copied()),
            outputs: bits(&mut node.outputs.iter().map(|&id| Some(id))),
        })
        .collect();
    let count = blocked.iter().filter(|&&b| b).count();
    plan.summary.blocked_values = count;
    if count > 0 {
        log::info!("{count} activations in the channel-blocked layout");
        plan.node_layouts = layouts;
    }
}

/// Unblocks every region (values connected through the nodes that read and write them blocked)
/// whose depthwise layers' work, weighted by [`DEPTHWISE_GAIN_WEIGHT`], is less than that of the
/// 1×1 layers at its edges (those that convert between layouts).
fn drop_unpaid_regions(graph: &Graph, plan: &Plan, uses: &[Option<BlockedUse>], blocked: &mut [bool]) {
    let mut parent: Vec<usize> = (0..blocked.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let dims = |id: Option<u32>| -> Vec<usize> {
        id.and_then(|id| plan.values[id as usize].as_ref()).map_or_else(Vec::new, |v| v.shape.clone())
    };
    // (a blocked value of the step, its gain or its cost in multiply-adds)
    let mut work: Vec<(usize, usize, usize)> = Vec::new();
    for &ni in &plan.steps {
        let node = &graph.nodes[ni];
        let ids: Vec<usize> = node
            .inputs
            .iter()
            .flatten()
            .chain(&node.outputs)
            .map(|&id| id as usize)
            .filter(|&id| blocked[id])
            .collect();
        for pair in ids.windows(2) {
            let (a, b) = (root(&mut parent, pair[0]), root(&mut parent, pair[1]));
            parent[a] = b;
        }
        let Some(&first) = ids.first() else { continue };
        let (x, y) = (dims(node.inputs.first().copied().flatten()), dims(node.outputs.first().copied()));
        let out: usize = y.iter().product();
        match uses[ni] {
            Some(BlockedUse::Tied { gain, .. }) => work.push((first, gain * DEPTHWISE_GAIN_WEIGHT, 0)),
            Some(BlockedUse::Free { .. }) => {
                let (x_blocked, y_blocked) = (
                    node.inputs.first().copied().flatten().is_some_and(|id| blocked[id as usize]),
                    node.outputs.first().is_some_and(|&id| blocked[id as usize]),
                );
                if x_blocked != y_blocked {
                    let plane: usize = y.get(2..).map_or(0, |s| s.iter().product());
                    let weight = if plane > LARGE_PLANE { LARGE_PLANE_EDGE_COST } else { 1 };
                    work.push((first, 0, weight * out * x.get(1).copied().unwrap_or(0)));
                }
            }
            Some(BlockedUse::Reads) | None => {}
        }
    }
    let (mut gain, mut cost) = (vec![0usize; blocked.len()], vec![0usize; blocked.len()]);
    for (id, g, c) in work {
        let r = root(&mut parent, id);
        gain[r] += g;
        cost[r] += c;
    }
    for (id, b) in blocked.iter_mut().enumerate() {
        let r = root(&mut parent, id);
        if *b && gain[r] <= cost[r] {
            *b = false;
        }
    }
}

/// Unblocks every value over a small plane (under [`SMALL_PLANE`] pixels) but those tied to a
/// depthwise layer whose work pays for its small-plane 1×1 neighbours: the layer's input and
/// output, and the products that gate its output (squeeze-excite), when its multiply-adds are at
/// least [`SMALL_PLANE_WEIGHT_COST`] times the weights of the 1×1 layers over small planes that
/// read or write them. A 1×1 layer between two small-plane values (a projection into a residual
/// stream) then reads or writes one of them planar, so it converts at no extra cost rather than
/// computing blocked over the small plane.
fn keep_small_planes_that_pay(graph: &Graph, plan: &Plan, uses: &[Option<BlockedUse>], blocked: &mut [bool]) {
    let shape = |id: usize| plan.values[id].as_ref().map_or(&[][..], |v| &v.shape[..]);
    let small = |id: usize| shape(id).get(2..).is_some_and(|s| s.iter().product::<usize>() < SMALL_PLANE);
    let channels = |id: Option<u32>| id.and_then(|id| shape(id as usize).get(1).copied()).unwrap_or(0);
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); blocked.len()];
    let mut writer: Vec<Option<usize>> = vec![None; blocked.len()];
    for &ni in &plan.steps {
        for &id in graph.nodes[ni].inputs.iter().flatten() {
            readers[id as usize].push(ni);
        }
        for &id in &graph.nodes[ni].outputs {
            writer[id as usize] = Some(ni);
        }
    }
    // Values tied to a small-plane depthwise layer that pays, or to one that does not.
    let (mut allowed, mut failing) = (vec![false; blocked.len()], vec![false; blocked.len()]);
    for &ni in &plan.steps {
        let Some(BlockedUse::Tied { input, gain }) = uses[ni] else { continue };
        let node = &graph.nodes[ni];
        let (Some(Some(x)), Some(&y)) = (node.inputs.get(input), node.outputs.first()) else { continue };
        let y = y as usize;
        if gain == 0 || !small(y) || !blocked[y] {
            continue;
        }
        // The layer's values and the gated products of its output, output by output.
        let mut tied = vec![*x as usize, y];
        let mut next = 1;
        while next < tied.len() {
            let v = tied[next];
            next += 1;
            for &r in &readers[v] {
                let gate = graph.nodes[r].outputs.first().map(|&o| o as usize);
                if let (Some(BlockedUse::Tied { input, gain: 0 }), Some(o)) = (uses[r], gate) {
                    if graph.nodes[r].inputs.get(input) == Some(&Some(v as u32)) && !tied.contains(&o) {
                        tied.push(o);
                    }
                }
            }
        }
        let mut neighbours: Vec<usize> = tied
            .iter()
            .flat_map(|&v| readers[v].iter().copied().chain(writer[v]))
            .filter(|&n| matches!(uses[n], Some(BlockedUse::Free { .. })))
            .collect();
        neighbours.sort_unstable();
        neighbours.dedup();
        let weights: usize = neighbours
            .iter()
            .map(|&n| &graph.nodes[n])
            .filter(|n| n.outputs.first().is_some_and(|&o| small(o as usize)))
            .map(|n| channels(n.inputs.first().copied().flatten()) * channels(n.outputs.first().copied()))
            .sum();
        let pays = gain >= SMALL_PLANE_WEIGHT_COST * weights;
        tied.iter().for_each(|&v| if pays { allowed[v] = true } else { failing[v] = true });
    }
    // Values tied to no small-plane depthwise layer (a residual stream between 1×1 layers) stay
    // blocked unless a 1×1 layer that reads or writes them touches one a depthwise layer left
    // planar (whose 1×1 layers would then convert over the small plane).
    for id in 0..blocked.len() {
        if !blocked[id] || !small(id) || allowed[id] || failing[id] {
            continue;
        }
        let touching = readers[id].iter().copied().chain(writer[id]);
        allowed[id] = touching.filter(|&n| matches!(uses[n], Some(BlockedUse::Free { .. }))).all(|n| {
            let node = &graph.nodes[n];
            !node.inputs.iter().flatten().chain(&node.outputs).any(|&v| failing[v as usize])
        });
    }
    for (id, b) in blocked.iter_mut().enumerate() {
        if *b && small(id) && !allowed[id] {
            *b = false;
        }
    }
}

/// Whether value `id` could be blocked by its own shape and place (see the module documentation).
fn candidate(graph: &Graph, plan: &Plan, id: usize) -> bool {
    let Some(v) = &plan.values[id] else { return false };
    let shape = &v.shape;
    let plane = shape.get(2..).map_or(0, |s| s.iter().product::<usize>());
    v.elem == ElemType::F32
        && matches!(v.slot, Slot::Arena(_))
        && shape.len() == 4
        && shape[0] == 1
        && shape[1] > 0
        && shape[1].is_multiple_of(pith_kernels::blocked::BLOCK)
        && (MIN_PLANE..=MAX_PLANE).contains(&plane)
        && !graph.outputs.iter().any(|&o| o as usize == id)
        && !graph.inputs.iter().any(|&i| i as usize == id)
}
