// Reading the graph the user is editing, and the pieces every BoLID widget is built from (no extension here: the
// extensions in this folder share these).

const PASS_THROUGH = new Set(["Reroute"]);

// The node and output slot that feed `node`'s input `name`, looking through Reroute nodes; null if unlinked.
export function inputOrigin(node, name) {
  let current = node;
  let slot = current?.findInputSlot?.(name) ?? -1;
  for (let hops = 0; hops < 64 && current && slot >= 0; hops++) {
    const link = current.getInputLink(slot);
    const origin = link ? current.graph?.getNodeById(link.origin_id) : null;
    if (!origin) return null;
    if (!PASS_THROUGH.has(origin.type)) return { node: origin, slot: link.origin_slot };
    current = origin;
    slot = 0;
  }
  return null;
}

// The nodes reading `node`'s output `slot`, looking through Reroute nodes.
export function outputTargets(node, slot = 0) {
  const found = [];
  const pending = [[node, slot]];
  for (let hops = 0; pending.length && hops < 256; hops++) {
    const [current, from] = pending.pop();
    for (const id of current.outputs?.[from]?.links ?? []) {
      const link = current.graph?.getLink(id);
      const target = link ? current.graph.getNodeById(link.target_id) : null;
      if (!target) continue;
      if (PASS_THROUGH.has(target.type)) pending.push([target, 0]);
      else found.push({ node: target, slot: link.target_slot });
    }
  }
  return found;
}

// A widget's value, or the value of the primitive node its input is linked to; undefined when it cannot be known
// before the prompt runs (the input is fed by another node's computation).
export function widgetValue(node, name) {
  if (node.findInputSlot?.(name) >= 0 && node.getInputLink(node.findInputSlot(name))) {
    const origin = inputOrigin(node, name);
    const primitive = origin?.node?.widgets?.find((w) => w.name === "value") ?? origin?.node?.widgets?.[0];
    return origin && /^Primitive/.test(origin.node.type) ? primitive?.value : undefined;
  }
  return node.widgets?.find((w) => w.name === name)?.value;
}

// A widget that only draws on the node: never written into the prompt or the saved workflow. `parts` gives its draw
// and its size (computeSize or computeLayoutSize).
export function drawnWidget(name, parts) {
  return { name, type: name, value: null, options: { serialize: false }, serialize: false, ...parts };
}

// Runs `extra` on the node after the node type's own `method` (and any other extension's), with the same arguments;
// the call returns what that method returned.
export function runAfter(nodeType, method, extra) {
  const original = nodeType.prototype[method];
  nodeType.prototype[method] = function () {
    const result = original?.apply(this, arguments);
    extra.apply(this, arguments);
    return result;
  };
}
