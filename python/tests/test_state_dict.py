"""Optimizer states in memory: state_image() / load_state_image() and the
torch / bitsandbytes state_dict layout (lowbit._state_dict).

Properties checked (all exact):
- state_image() is byte for byte the file save() writes;
- state_dict() has bitsandbytes' layout: per parameter "step", and under
  "__bnb_optimizer_quant_state__" 8-bit codes shaped like the parameter,
  4-bit codes packed, float32 states for tensors under 4096 elements, the
  qmaps equal to an independent float64-built dynamic map within 4 float32
  ulps (bitsandbytes' own maps differ by up to 2), one absmax per block;
- a fresh optimizer that loads the dict continues bit for bit like the
  uninterrupted one (int8 states over fp32 weights; int8 QFT weights),
  with group hyperparameters restored from the dict;
- a dictionary in bitsandbytes' form (no "lowbit" entry, no skip counts,
  qmaps 1 ulp off, parameters it never stepped left out) loads and
  continues identically;
- wrong dtypes, sizes, shapes (per-element states must have the
  parameter's shape, the others be flat), groups, maps, missing keys or
  keys that are not int indices raise InvalidArgument naming the key, and
  leave states and hyperparameters as they were.
"""

import copy
import os
import shutil
import tempfile
import unittest

from lowbit_testing import dynamic_map, lowbit, np

QUANT = "__bnb_optimizer_quant_state__"


def grads_for(rng, shapes):
    return [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes]


def adamw8(weights, lrs=(1e-2, 5e-3)):
    """AdamW, int8 states: weights[0] in group 0, the rest in group 1."""
    opt = lowbit.Optimizer("adamw", "int8", "fp32", lr=lrs[0], seed=3)
    opt.add_param(weights[0], name="layers.0.weight")
    opt.add_group(lr=lrs[1], weight_decay=0.0)
    for i, w in enumerate(weights[1:], 1):
        opt.add_param(w, group=1, name="layers.%d.weight" % i)
    return opt


class StateImageTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lowbit-state-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_image_is_the_saved_file(self):
        rng = np.random.default_rng(1)
        w = [rng.standard_normal((64, 128)).astype(np.float32), rng.standard_normal(300).astype(np.float32)]
        opt = adamw8(w)
        for _ in range(3):
            opt.step(grads_for(rng, [(64, 128), 300]))
        path = os.path.join(self.tmp, "opt.safetensors")
        opt.save(path)
        with open(path, "rb") as f:
            self.assertEqual(bytes(opt.state_image()), f.read())
        # and the file's bytes load back as an image
        w2 = [x.copy() for x in w]
        again = adamw8(w2)
        with open(path, "rb") as f:
            again.load_state_image(f.read())
        self.assertEqual(bytes(again.state_image()), bytes(opt.state_image()))


class StateDictTest(unittest.TestCase):
    shapes = [(64, 128), 300, 5000]

    def trained(self, steps=4, seed=7):
        rng = np.random.default_rng(seed)
        w = [rng.standard_normal(s).astype(np.float32) for s in self.shapes]
        start = [x.copy() for x in w]
        opt = adamw8(w)
        self.grads = []
        for _ in range(steps):
            self.grads.append(grads_for(rng, self.shapes))
            opt.step(self.grads[-1])
        return opt, w, start, rng

    def test_layout(self):
        opt, w, _, _ = self.trained()
        # one skipped update of parameter 1
        bad = grads_for(np.random.default_rng(0), self.shapes)
        bad[1][3] = np.nan
        opt.step(bad)
        sd = opt.state_dict()
        self.assertEqual(sorted(sd["state"]), [0, 1, 2])
        self.assertEqual([(s["step"], s["skipped"]) for s in sd["state"].values()], [(5, 0), (4, 1), (5, 0)])
        self.assertEqual(sd["lowbit"]["step_count"], 5)
        self.assertEqual(sd["lowbit"]["composition"], "adamw/int8/fp32/host")
        self.assertEqual([g["params"] for g in sd["param_groups"]], [[0], [1, 2]])
        self.assertAlmostEqual(sd["param_groups"][1]["lr"], 5e-3, places=9)
        q0 = sd["state"][0][QUANT]
        self.assertEqual(sorted(q0), ["absmax1", "absmax2", "qmap1", "qmap2", "state1", "state2"])
        self.assertEqual((q0["state1"].shape, q0["state1"].dtype), ((64, 128), np.uint8))
        self.assertEqual((q0["absmax1"].shape, q0["absmax1"].dtype), ((8192 // 256,), np.float32))
        for key, signed in (("qmap1", True), ("qmap2", False)):
            ref = dynamic_map(signed).astype(np.float64)
            got = q0[key].astype(np.float64)
            self.assertEqual(got.shape, (256,))
            ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
            self.assertTrue(np.all(np.abs(got - ref) <= 4 * ulp), key)
        q1 = sd["state"][1][QUANT]  # 300 elements: float32 states, as bitsandbytes keeps them
        self.assertEqual(sorted(q1), ["state1", "state2"])
        self.assertEqual((q1["state1"].shape, q1["state1"].dtype), ((300,), np.float32))
        # float32 moments against their float64 recurrences over the 4
        # applied steps (betas 0.9 / 0.999): within 8 float32 roundings of
        # the largest term
        m = np.zeros(300)
        v = np.zeros(300)
        for g in self.grads:
            g = g[1].astype(np.float64)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
        scale_m = max(np.abs(g[1]).max() for g in self.grads)
        scale_v = max((g[1].astype(np.float64) ** 2).max() for g in self.grads)
        self.assertLessEqual(np.abs(q1["state1"] - m).max(), 8 * 2.0 ** -24 * scale_m)
        self.assertLessEqual(np.abs(q1["state2"] - v).max(), 8 * 2.0 ** -24 * scale_v)
        self.assertEqual(sd["state"][2][QUANT]["state1"].shape, (5000,))

    def test_4bit_codes_are_packed(self):
        rng = np.random.default_rng(2)
        w = rng.standard_normal(8192).astype(np.float32)
        opt = lowbit.Optimizer("adamw", "int4", "fp32")
        opt.add_param(w)
        opt.step([rng.standard_normal(8192).astype(np.float32)])
        q = opt.state_dict()["state"][0][QUANT]
        self.assertEqual(q["state1"].shape, (4096,))
        self.assertEqual(q["qmap1"].shape, (16,))
        self.assertEqual(q["absmax1"].shape, (8192 // 128,))

    def test_load_continues_bit_for_bit(self):
        opt, w, _, rng = self.trained()
        sd = opt.state_dict()
        w2 = [x.copy() for x in w]
        other = adamw8(w2, lrs=(0.5, 0.5))  # hyperparameters come from the dict
        other.load_state_dict(sd)
        self.assertEqual(other.hparams(1), opt.hparams(1))
        self.assertEqual(other.param_info(1).steps, 4)
        for _ in range(3):
            g = grads_for(rng, self.shapes)
            opt.step(g)
            other.step(g)
        for a, b in zip(w, w2):
            self.assertEqual(a.tobytes(), b.tobytes())

    def test_qft_weights_continue_bit_for_bit(self):
        rng = np.random.default_rng(3)
        p0 = rng.standard_normal(8192).astype(np.float32)
        qa = lowbit.quantize(p0, "int8", block_size=256)

        def make(q):
            opt = lowbit.Optimizer("lion", "int8", "int8", lr=1e-3, seed=5, stable_weight_scales=True)
            opt.add_param(q, name="q")
            return opt

        oa = make(qa)
        for _ in range(4):
            oa.step([rng.standard_normal(8192).astype(np.float32)])
        sd = oa.state_dict()
        qb = qa.copy()
        ob = make(qb)
        ob.load_state_dict(copy.deepcopy(sd))
        for _ in range(4):
            g = rng.standard_normal(8192).astype(np.float32)
            oa.step([g])
            ob.step([g])
        self.assertEqual(qa.codes.tobytes(), qb.codes.tobytes())
        self.assertEqual(qa.absmax.tobytes(), qb.absmax.tobytes())

    def test_bitsandbytes_form(self):
        opt, w, start, rng = self.trained()
        sd = opt.state_dict()
        bnb = {"state": {}, "param_groups": [dict(g) for g in sd["param_groups"]]}
        for i, s in sd["state"].items():
            quant = dict(s[QUANT])
            for key in ("qmap1", "qmap2"):
                if key in quant:  # a map made on another CPU: entries an ulp away
                    m = quant[key].copy()
                    m[::7] = np.nextafter(m[::7], np.float32(2))
                    quant[key] = m
            bnb["state"][i] = {"step": s["step"], QUANT: quant}
            bnb["param_groups"][0 if i == 0 else 1]["alpha"] = 0.0  # keys lowbit does not use are ignored
        w2 = [x.copy() for x in w]
        other = adamw8(w2)
        other.load_state_dict(bnb)
        self.assertEqual(bytes(other.state_image()), bytes(opt.state_image()))
        for _ in range(2):
            g = grads_for(rng, self.shapes)
            opt.step(g)
            other.step(g)
        for a, b in zip(w, w2):
            self.assertEqual(a.tobytes(), b.tobytes())

        # a parameter bitsandbytes never stepped is absent: it keeps a fresh
        # state in a fresh optimizer, and is refused by one that stepped it
        partial = {"state": {0: bnb["state"][0]}, "param_groups": bnb["param_groups"]}
        fresh_w = [x.copy() for x in start]
        fresh = adamw8(fresh_w)
        fresh.load_state_dict(partial)
        info = [fresh.param_info(i).steps for i in range(3)]
        self.assertEqual(info, [4, 0, 0])
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"no state for parameter 1 .*already stepped"):
            other.load_state_dict(partial)

    def test_bad_dicts_change_nothing(self):
        opt, w, _, _ = self.trained()
        sd = opt.state_dict()
        w2 = [x.copy() for x in w]
        target = adamw8(w2, lrs=(0.25, 0.125))
        before = bytes(target.state_image())
        hparams = [target.hparams(0), target.hparams(1)]

        def refused(mutate, pattern, error=lowbit.InvalidArgument):
            bad = copy.deepcopy(sd)
            mutate(bad)
            with self.assertRaisesRegex(error, pattern):
                target.load_state_dict(bad)
            self.assertEqual(bytes(target.state_image()), before)
            self.assertEqual([target.hparams(0), target.hparams(1)], hparams)

        def set_quant(i, key, value):
            return lambda d: d["state"][i][QUANT].__setitem__(key, value)

        refused(set_quant(0, "state1", np.zeros((64, 128), np.float32)),
                r"state_dict\['state'\]\[0\]\['state1'\]: dtype float32")
        refused(set_quant(0, "absmax1", np.zeros(31, np.float32)), r"\['absmax1'\]: 31 elements")
        refused(set_quant(1, "state1", np.zeros(300, np.uint16)), r"\['state'\]\[1\]\['state1'\]")
        # the right element count in another shape: the states of another
        # parameter, or flattened per-element states; absmax / qmap flat
        refused(set_quant(0, "state1", sd["state"][0][QUANT]["state1"].reshape(128, 64)),
                r"\[0\]\['state1'\]: shape \(128, 64\), this optimizer's needs \(64, 128\)")
        refused(set_quant(0, "state2", sd["state"][0][QUANT]["state2"].reshape(-1)),
                r"\[0\]\['state2'\]: shape \(8192,\), this optimizer's needs \(64, 128\)")
        refused(set_quant(0, "absmax1", sd["state"][0][QUANT]["absmax1"].reshape(4, 8)),
                r"\['absmax1'\]: shape \(4, 8\), this optimizer's needs \(32,\)")
        refused(lambda d: d["state"].__setitem__("0", d["state"].pop(0)),
                r"key '0' is not a parameter index: the keys must be ints")
        refused(lambda d: d["state"][2][QUANT].pop("state2"), r"\['state'\]\[2\]: no 'state2'")
        refused(lambda d: d["state"][0].__setitem__("step", -1), r"\['step'\]: expected a count")
        refused(lambda d: d["state"].__setitem__(3, d["state"][0]), r"parameter 3, this optimizer has parameters 0 to 2")
        refused(lambda d: d["param_groups"].pop(), r"1 parameter groups, this optimizer has 2")
        refused(lambda d: d["param_groups"][1]["params"].pop(), r"group 1 has 1 parameters")
        # a map that is not the dynamic map: the C loader refuses the image
        refused(set_quant(0, "qmap1", np.linspace(-1, 1, 256, dtype=np.float32)), r"qmap1' differs")
        # a negative block scale
        refused(set_quant(0, "absmax2", -np.ones(32, np.float32)), r"absmax2' block 0", lowbit.MalformedFile)
        # another composition's dictionary
        refused(lambda d: d["lowbit"].__setitem__("composition", "adamw/int4/fp32/host"),
                r"made by a adamw/int4/fp32/host optimizer, this one is adamw/int8/fp32/host")
        # a dict of another rule's hyperparameters that this rule cannot take
        refused(lambda d: d["param_groups"][0].__setitem__("lr", "fast"), r"param group 0 has unusable hyperparameters")


if __name__ == "__main__":
    unittest.main()
