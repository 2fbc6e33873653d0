// "BoLID Decoupled CFG Guider": draws the alpha/beta schedule step by step on the node, and warns when a list's
// length differs from the steps of the sampler the guider feeds (the server would refuse the prompt at that point).
import { app } from "../../../scripts/app.js";
import { drawnWidget, inputOrigin, outputTargets, runAfter, widgetValue } from "./bolid_graph.js";

const NODE_NAME = "BoLIDDecoupledCFGGuider";
const PREFERRED_HEIGHT = 150;
const MIN_HEIGHT = 44;
const ALPHA_COLOUR = "#4fc3f7";
const BETA_COLOUR = "#ffb74d";
const WARNING_COLOUR = "#ff5252";
const PLAIN_END_STEPS = "plain_conditional";
const DECIMAL = /^[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d[\d_]*)?$/;
const NOT_FINITE = /^[+-]?(inf|infinity|nan)$/i;

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

const withDenoise = (steps, denoise) => (denoise < 1 ? (denoise <= 0 ? 0 : roundHalfEven(steps * denoise)) : steps);

// How many steps the sigmas of a node's output hold, from core's scheduler code (comfy_extras). `input` is the
// step count of the node's own "sigmas" input, for nodes that transform sigmas.
const STEP_RULES = {
  BasicScheduler: ({ steps, denoise }) => (denoise <= 0 ? 0 : steps),
  AlignYourStepsScheduler: ({ steps, denoise }) => withDenoise(steps, denoise),
  GITSScheduler: ({ steps, denoise }) => withDenoise(steps, denoise),
  OptimalStepsScheduler: ({ steps, denoise }) => withDenoise(steps, denoise),
  SDTurboScheduler: ({ steps, denoise }) => Math.max(0, Math.min(steps, Math.trunc(10 * denoise))),
  SplitSigmas: ({ input, step }, slot) => (slot === 0 ? Math.min(step, input) : Math.max(0, input - step)),
  SplitSigmasDenoise: ({ input, denoise }, slot) => {
    const low = roundHalfEven(input * denoise);
    return slot === 0 ? (low === 0 ? 0 : input - low) : Math.min(low, input);
  },
  FlipSigmas: ({ input }) => input,
  SetFirstSigma: ({ input }) => input,
};

// Python's parse_step_values (bolid_core/guidance/dcg.py): {values} (a single value serves every step) or {error}.
export function parseStepValues(text) {
  const parts = String(text ?? "")
    .replaceAll(";", ",")
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part);
  if (!parts.length) {
    return { error: "Give one number, or one number per step separated by commas (e.g. 1, 1.5, 1.5, 1)." };
  }
  const values = [];
  for (const part of parts) {
    if (NOT_FINITE.test(part)) {
      return { error: `'${text}' holds a value that is not a finite number (nan or inf): use e.g. 1, 1.5, 1.5, 1.` };
    }
    const value = DECIMAL.test(part) ? Number(part.replaceAll("_", "")) : NaN;
    if (!Number.isFinite(value)) return { error: `'${text}' is not a list of numbers: use e.g. 1, 1.5, 1.5, 1.` };
    values.push(value);
  }
  return { values };
}

// What the server does with these inputs at `steps` steps (null: unknown). The warning is its own refusal message.
export function scheduleCheck(alphaText, betaText, steps) {
  const lists = { alpha: parseStepValues(alphaText), beta: parseStepValues(betaText) };
  const problems = [];
  for (const [name, parsed] of Object.entries(lists)) {
    if (parsed.error) problems.push({ name, error: parsed.error });
    else if (Number.isInteger(steps) && parsed.values.length > 1 && parsed.values.length !== steps) {
      problems.push({
        name,
        count: parsed.values.length,
        steps,
        error:
          `${name} has ${parsed.values.length} values for ${steps} steps: the sampler runs ${steps} steps, so give ` +
          `one value for all of them, or ${steps} values separated by commas.`,
      });
    }
  }
  return { alpha: lists.alpha.values ?? null, beta: lists.beta.values ?? null, steps, problems };
}

function sigmaSteps(node, slot, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const rule = STEP_RULES[node.type] ?? (node.widgets?.some((w) => w.name === "steps") ? ({ steps }) => steps : null);
  if (!rule) return null;
  const known = {};
  for (const name of ["steps", "denoise", "step"]) {
    known[name] = Number(widgetValue(node, name) ?? (name === "denoise" ? 1 : NaN));
  }
  if (node.findInputSlot("sigmas") >= 0) {
    const origin = inputOrigin(node, "sigmas");
    known.input = origin ? sigmaSteps(origin.node, origin.slot, seen) : null;
    if (known.input === null) return null;
  }
  const steps = rule(known, slot);
  return Number.isInteger(steps) && steps >= 0 ? steps : null;
}

// The step counts of the samplers this guider feeds: [{steps, from}], steps null where the graph cannot tell.
export function samplerSteps(node) {
  return outputTargets(node, 0)
    .filter(({ node: sampler }) => sampler.findInputSlot("sigmas") >= 0)
    .map(({ node: sampler }) => {
      const origin = inputOrigin(sampler, "sigmas");
      return { steps: origin ? sigmaSteps(origin.node, origin.slot) : null, from: origin?.node?.title ?? null };
    });
}

function shortProblem(problem) {
  const what = problem.count ? `${problem.count} values, ${problem.steps} steps` : "not numbers";
  return `⚠ ${problem.name}: ${what}`;
}

export function scheduleState(node) {
  const alphaText = widgetValue(node, "alpha");
  const betaText = widgetValue(node, "beta");
  const samplers = samplerSteps(node);
  const counts = [...new Set(samplers.map((s) => s.steps).filter((s) => s !== null))];
  const checks = (counts.length ? counts : [null]).map((steps) => scheduleCheck(alphaText, betaText, steps));
  const problems = checks.flatMap((check) => check.problems);
  const warnings = [...new Set(problems.map((p) => p.error))];
  const { alpha, beta } = checks[0];
  const length = counts.length === 1 ? counts[0] : Math.max(alpha?.length ?? 1, beta?.length ?? 1);
  return {
    alpha,
    beta,
    steps: counts.length === 1 ? counts[0] : null,
    samplers,
    plainEnds: widgetValue(node, "end_steps") === PLAIN_END_STEPS,
    length,
    warnings,
    short: [...new Set(problems.map(shortProblem))],
  };
}

function stepValue(values, step) {
  return values.length === 1 ? values[0] : values[step];
}

function drawBars(ctx, state, left, top, width, height) {
  const { alpha, beta, length, plainEnds } = state;
  const all = [...alpha, ...beta, 0];
  const high = Math.max(...all);
  const low = Math.min(...all);
  const span = high - low || 1;
  const zeroY = top + height - (height * (0 - low)) / span;
  const slot = width / Math.max(1, length);
  const bar = Math.max(2, Math.min(18, slot / 3));
  ctx.font = "10px sans-serif";
  ctx.textAlign = "center";
  for (let step = 0; step < length; step++) {
    const centre = left + slot * (step + 0.5);
    if (plainEnds && (step === 0 || step === length - 1)) {
      ctx.fillStyle = "#555";
      ctx.fillRect(centre - bar, top, 2 * bar, height);
      ctx.fillStyle = "#bbb";
      ctx.fillText("text+id", centre, top + height / 2);
    } else {
      for (const [values, colour, offset] of [[alpha, ALPHA_COLOUR, -bar], [beta, BETA_COLOUR, 0]]) {
        const value = stepValue(values, step);
        if (value === undefined) {
          ctx.fillStyle = WARNING_COLOUR; // the list is shorter than the sampler's steps
          ctx.fillText("?", centre + offset + bar / 2, zeroY - 2);
          continue;
        }
        const y = top + height - (height * (value - low)) / span;
        ctx.fillStyle = colour;
        ctx.fillRect(centre + offset, Math.min(y, zeroY), bar, Math.max(1, Math.abs(zeroY - y)));
        if (slot > 34) {
          ctx.fillText(String(Number(value.toPrecision(3))), centre + offset + bar / 2, Math.min(y, zeroY) - 2);
        }
      }
    }
    if (slot > 14) {
      ctx.fillStyle = "#888";
      ctx.fillText(String(step + 1), centre, top + height + 11);
    }
  }
  ctx.textAlign = "left";
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines;
}

function scheduleWidget(node) {
  return drawnWidget("bolid_dcg_schedule", {
    computeLayoutSize: () => ({ minHeight: MIN_HEIGHT, maxHeight: 1e6, minWidth: 0 }),
    draw(ctx, _node, width, y) {
      const height = this.computedHeight ?? PREFERRED_HEIGHT;
      const state = scheduleState(node);
      node.bolidScheduleShown = { ...state, lines: [] };
      ctx.save();
      ctx.fillStyle = "#1e1e1e";
      ctx.fillRect(10, y + 2, width - 20, height - 6);
      ctx.font = "12px sans-serif";
      let top = y + 18;
      if (state.warnings.length) {
        ctx.fillStyle = WARNING_COLOUR;
        const full = state.warnings.flatMap((w) => wrap(ctx, `⚠ ${w}`, width - 32));
        const lines = full.length * 15 + 70 <= height ? full : state.short; // the long form only with room for the bars
        for (const line of lines) {
          node.bolidScheduleShown.lines.push(line);
          ctx.fillText(line, 16, top);
          top += 15;
        }
      } else {
        ctx.fillStyle = "#ddd";
        const steps = state.steps === null ? "sampler steps unknown" : `${state.steps} sampler steps`;
        ctx.fillText(`${steps}   `, 16, top);
        const legend = ctx.measureText(`${steps}   `).width + 16;
        ctx.fillStyle = ALPHA_COLOUR;
        ctx.fillText("■ alpha", legend, top);
        ctx.fillStyle = BETA_COLOUR;
        ctx.fillText("■ beta", legend + ctx.measureText("■ alpha  ").width, top);
        top += 8;
      }
      const chartHeight = y + height - 22 - top;
      if (state.alpha && state.beta && chartHeight > 24) {
        drawBars(ctx, state, 16, top + 10, width - 32, chartHeight - 10);
      }
      ctx.restore();
    },
  });
}

app.registerExtension({
  name: "BoLID.DCGSchedule",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_NAME) return;
    runAfter(nodeType, "onNodeCreated", function () {
      this.addCustomWidget(scheduleWidget(this));
      this.setSize([Math.max(this.size[0], 320), this.computeSize()[1] + PREFERRED_HEIGHT - MIN_HEIGHT]);
    });
    // A red frame around the node as well: the warning stays visible when the node is small or zoomed out.
    runAfter(nodeType, "onDrawForeground", function (ctx) {
      if (!this.flags?.collapsed && scheduleState(this).warnings.length) {
        ctx.save();
        ctx.strokeStyle = WARNING_COLOUR;
        ctx.lineWidth = 3;
        const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
        ctx.strokeRect(-3, -title - 3, this.size[0] + 6, this.size[1] + title + 6);
        ctx.restore();
      }
    });
  },
});
