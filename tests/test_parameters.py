"""The sampled coordinates of the mass parameters: Cartesian pairs against their definitions and lenstronomy's, the
same deflection before and after a round trip, the priors recovered by MALA under a flat likelihood, config
errors that name the entry."""

import math

import pytest
import torch

from scorelens.inference.mala import MALA
from scorelens.inference.parameters import (
    PAIRS,
    ParameterError,
    ParameterSpace,
    canonical_mass,
    pair_to_polar,
    polar_to_pair,
)
from scorelens.lensing.mass import PARAM_NAMES, deflection

F64 = torch.float64
DEFAULT = dict(theta_E=dict(uniform=[0.2, 4.0], scale=0.003), gamma=dict(normal=[1.0, 0.2], scale=0.01),
               x0=dict(uniform=[-0.5, 0.5], scale=0.002), y0=dict(uniform=[-0.5, 0.5], scale=0.002),
               ellipticity=dict(normal=0.2, max=0.667, scale=0.003), shear=dict(normal=0.05, max=0.3, scale=0.003),
               multipole3=dict(normal=0.01, scale=0.002), multipole4=dict(normal=0.01, scale=0.002))

# physical models, one per row: ordinary values, q = 1, no shear, no multipoles, negative (old-style) amplitudes,
# angles outside their period
CASES = {
    "theta_E": [1.2, 0.9, 1.5, 1.1, 1.3],
    "gamma": [1.0, 1.1, 0.9, 1.0, 1.2],
    "q": [0.7, 1.0, 0.45, 0.9, 0.6],
    "phi": [2.9, 0.4, -0.3, 4.0, 1.0],
    "x0": [0.01, -0.02, 0.0, 0.03, 0.0],
    "y0": [0.0, 0.02, -0.01, 0.0, 0.01],
    "gamma_ext": [0.02, 0.0, 0.05, -0.03, 0.1],
    "phi_ext": [1.2, 0.0, -0.5, 0.2, 3.5],
    "a3": [0.01, 0.0, -0.02, 0.005, -0.01],
    "phi3": [0.1, 0.0, 0.5, 2.5, -1.0],
    "a4": [-0.01, 0.0, 0.015, 0.0, 0.02],
    "phi4": [0.3, 0.0, 1.7, 0.2, -0.4],
}


def space(params=None, n_exp=2):
    return ParameterSpace(params or DEFAULT, n_exp, shift_max=0.2, shift_scale=0.002)


def physical(cases=CASES, n_exp=2):
    """The CASES as a physical vector [B, D] with small shifts, float64."""
    b = len(cases["q"])
    mass = {k: torch.tensor(v, dtype=F64) for k, v in cases.items()}
    shifts = 0.01 * torch.arange(b * n_exp * 2, dtype=F64).reshape(b, n_exp, 2)
    return space(n_exp=n_exp).vector(mass, shifts)


def test_cartesian_pairs_follow_their_definitions():
    s = space()
    u = s.to_sampled(physical())
    c = {n: u[:, i] for i, n in enumerate(s.coords)}
    p = {k: torch.tensor(v, dtype=F64) for k, v in CASES.items()}
    e = (1 - p["q"]) / (1 + p["q"])
    torch.testing.assert_close(c["e1"], e * torch.cos(2 * p["phi"]))
    torch.testing.assert_close(c["e2"], e * torch.sin(2 * p["phi"]))
    torch.testing.assert_close(c["gamma1"], p["gamma_ext"] * torch.cos(2 * p["phi_ext"]))
    torch.testing.assert_close(c["gamma2"], p["gamma_ext"] * torch.sin(2 * p["phi_ext"]))
    for m in (3, 4):
        torch.testing.assert_close(c[f"a{m}_cos"], p[f"a{m}"] * torch.cos(m * p[f"phi{m}"]))
        torch.testing.assert_close(c[f"a{m}_sin"], p[f"a{m}"] * torch.sin(m * p[f"phi{m}"]))
    for n in ("theta_E", "gamma", "x0", "y0"):
        torch.testing.assert_close(c[n], p[n])


def test_ellipticity_and_shear_match_lenstronomy():
    param_util = pytest.importorskip("lenstronomy.Util.param_util")
    for q, phi in ((0.7, 2.9), (0.45, -0.3), (1.0, 0.4), (0.3, 1.2)):
        e1, e2 = polar_to_pair(PAIRS["ellipticity"], torch.tensor(q, dtype=F64), torch.tensor(phi, dtype=F64))
        ref = param_util.phi_q2_ellipticity(phi, q)
        assert (float(e1), float(e2)) == pytest.approx(ref, abs=1e-12)
        q_back, phi_back = pair_to_polar(PAIRS["ellipticity"], e1, e2)
        ref_phi, ref_q = param_util.ellipticity2phi_q(*ref)
        assert float(q_back) == pytest.approx(ref_q, abs=1e-12)
        if q < 1:  # the same axis (lenstronomy's angle lies in (-pi/2, pi/2], ours in [0, pi))
            assert math.remainder(float(phi_back) - ref_phi, math.pi) == pytest.approx(0.0, abs=1e-12)
    for gamma, phi in ((0.05, 1.2), (0.02, -0.4)):
        g1, g2 = polar_to_pair(PAIRS["shear"], torch.tensor(gamma, dtype=F64), torch.tensor(phi, dtype=F64))
        assert (float(g1), float(g2)) == pytest.approx(param_util.shear_polar2cartesian(phi, gamma), abs=1e-12)


def test_round_trip_gives_the_canonical_physical_parameters():
    """physical -> Cartesian -> physical: q, theta_E, ... unchanged; amplitudes |a| with the angle turned by half
    a period where a < 0; angles folded into phi, phi_ext in [0, pi), phi_m in [0, 2 pi / m); at q = 1,
    gamma_ext = 0, a_m = 0 the angle is 0."""
    s = space()
    v = physical()
    back = s.to_physical(s.to_sampled(v))
    got = {n: back[:, i] for i, n in enumerate(s.names)}
    torch.testing.assert_close(back[:, len(PARAM_NAMES):], v[:, len(PARAM_NAMES):])
    for n in ("theta_E", "gamma", "x0", "y0", "q"):
        torch.testing.assert_close(got[n], torch.tensor(CASES[n], dtype=F64))
    for amp, ang, period, turn in (("gamma_ext", "phi_ext", math.pi, math.pi / 2), ("a3", "phi3", 2 * math.pi / 3,
                                   math.pi / 3), ("a4", "phi4", math.pi / 2, math.pi / 4), ("q", "phi", math.pi, 0)):
        for b, (a, phi) in enumerate(zip(CASES[amp], CASES[ang], strict=True)):
            a_got, phi_got = float(got[amp][b]), float(got[ang][b])
            assert 0 <= phi_got < period
            if amp != "q":
                assert a_got == pytest.approx(abs(a), abs=1e-14)
            if a == 0 or (amp == "q" and a == 1):
                assert phi_got == 0.0
                continue
            want = phi + (turn if a < 0 else 0.0)
            assert math.remainder(phi_got - want, period) == pytest.approx(0.0, abs=1e-12), (amp, b)
    # canonical_mass (truth.json, figures) is the same convention
    one = canonical_mass({k: v[2] for k, v in CASES.items()})
    assert one == pytest.approx({n: float(got[n][2]) for n in PARAM_NAMES}, abs=1e-12)


def test_deflection_of_the_transformed_parameters_equals_the_original():
    s = space()
    v = physical()
    mass, _ = s.split(v)
    again, _ = s.unpack(s.to_sampled(v))
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(200, generator=g, dtype=F64) * 4 - 2 for _ in range(2))
    ax, ay = deflection(mass, x, y)
    bx, by = deflection(again, x, y)
    torch.testing.assert_close(bx, ax, rtol=0, atol=1e-12)
    torch.testing.assert_close(by, ay, rtol=0, atol=1e-12)


def test_gradients_are_finite_where_the_polar_angles_are_undefined():
    """At q = 1, gamma_ext = 0, a_m = 0 (the SLACS starts) the deflection's gradient in the sampled coordinates is
    finite, and away from there it is the model's own (checked against finite differences)."""
    s = space()
    u0 = s.to_sampled(physical())[:2]  # ordinary row, and the row with q = 1, no shear, no multipoles
    x, y = torch.linspace(-1.5, 1.5, 30, dtype=F64), torch.linspace(-1.0, 1.2, 30, dtype=F64)

    def total(u):
        mass, _ = s.unpack(u)
        ax, ay = deflection(mass, x, y)
        return (ax * 1.3 + ay).sum(-1)

    u = u0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(total(u).sum(), u)
    assert torch.isfinite(grad).all()
    eps = 1e-6
    for i in range(2, 12):  # the pairs' coordinates, ordinary row
        d = torch.zeros_like(u0)
        d[0, i] = eps
        fd = (total(u0 + d)[0] - total(u0 - d)[0]) / (2 * eps)
        assert float(grad[0, i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), s.coords[i]


# ------------------------------------------------------------------------------- priors under a flat likelihood

PRIOR_TEST = dict(theta_E=dict(uniform=[1.0, 2.0], scale=0.3), gamma=dict(normal=[1.0, 0.2], scale=0.15),
                  x0=dict(fixed=True), y0=dict(uniform=[-0.5, 0.5], scale=0.002, fixed=True),
                  ellipticity=dict(normal=0.2, max=0.3, scale=0.1), shear=dict(disk=0.1, scale=0.04),
                  multipole3=dict(normal=0.01, scale=0.008), multipole4=dict(normal=0.01, max=0.015, scale=0.008))


def truncated_rayleigh_moment(sd, r_max):
    """E[|c|^2] of an isotropic 2-D Gaussian of sd `sd` per component truncated to |c| <= r_max."""
    t = r_max**2 / (2 * sd**2)
    return 2 * sd**2 - (r_max**2 * math.exp(-t) / -math.expm1(-t) if math.isfinite(t) else 0.0)


def test_mala_under_a_flat_likelihood_recovers_each_prior():
    """2000 chains of MALA on the log prior alone (the mass block with a flat likelihood): each pair's E|c|^2 and
    the fraction inside half its scale radius match the analytic prior, its reported angle is uniform over its
    period (mean half the period, first harmonics zero), and the scalars' means and variances match theirs; all
    within 4 Monte Carlo standard errors. The chains start at the polar singularity of every pair."""
    s = space(PRIOR_TEST, n_exp=1)
    start = {k: torch.full((2000,), v, dtype=F64) for k, v in dict(
        theta_E=1.5, gamma=1.0, q=1.0, phi=0.0, x0=0.0, y0=0.0, gamma_ext=0.0, phi_ext=0.0, a3=0.0, phi3=0.0,
        a4=0.0, phi4=0.0).items()}
    u0 = s.to_sampled(s.vector(start, torch.zeros(2000, 1, 2, dtype=F64)))

    def log_prob(free):
        with torch.enable_grad():
            free = free.detach().requires_grad_(True)
            lp = s.log_prior(s.embed(free, u0))
            (grad,) = torch.autograd.grad(torch.where(torch.isfinite(lp), lp, 0.0).sum(), free)
        return lp.detach(), grad

    kernel = MALA(log_prob, s.precond(u0))
    g = torch.Generator().manual_seed(5)
    state = kernel.run(kernel.init(s.free_part(u0), 0.5), 300, g, adapt=True)
    state = kernel.run(state, 100, g)
    names = s.names

    def stats(free):
        v = s.to_physical(s.embed(free, u0))
        p = {n: v[:, i] for i, n in enumerate(names)}
        u = s.embed(free, u0)
        c = {n: u[:, i] for i, n in enumerate(s.coords)}
        out = [p["theta_E"], (p["theta_E"] - 1.5) ** 2, p["gamma"], (p["gamma"] - 1.0) ** 2]
        for pair in PAIRS.values():
            c1, c2 = c[pair.coords[0]], c[pair.coords[1]]
            r2 = c1 * c1 + c2 * c2
            angle = p[pair.physical[1]]
            radius = {"ellipticity": 0.15, "shear": 0.05, "multipole3": 0.01, "multipole4": 0.01}[pair.key]
            out += [r2, (r2 < radius**2).to(F64), angle, torch.cos(pair.k * angle), torch.sin(pair.k * angle)]
        return torch.stack(out, dim=-1)

    total = 0.0
    for _ in range(400):
        state = kernel.step(state, g)
        total = total + stats(state.x)
    averages = total / 400

    def inside(sd, r_max, r):  # P(|c| < r) for the truncated 2-D Gaussian
        return -math.expm1(-r**2 / (2 * sd**2)) / -math.expm1(-r_max**2 / (2 * sd**2))

    truth = [1.5, 1 / 12, 1.0, 0.04]
    for key, r2, frac in (("ellipticity", truncated_rayleigh_moment(0.2, 0.3), inside(0.2, 0.3, 0.15)),
                          ("shear", 0.1**2 / 2, 0.25),
                          ("multipole3", 2 * 0.01**2, -math.expm1(-0.01**2 / (2 * 0.01**2))),
                          ("multipole4", truncated_rayleigh_moment(0.01, 0.015), inside(0.01, 0.015, 0.01))):
        truth += [r2, frac, math.pi / PAIRS[key].k, 0.0, 0.0]
    mean = averages.mean(0)
    se = averages.std(0) / math.sqrt(averages.shape[0])
    z = (mean - torch.tensor(truth, dtype=F64)) / se
    assert (z.abs() < 4).all(), z
    # the truncation is seen: the ellipticity's E|e|^2 is far from the untruncated 2 sd^2 = 0.08
    assert abs(float(mean[4]) - 0.08) > 20 * float(se[4])
    # the fixed coordinates stayed at the start
    assert torch.equal(s.embed(state.x, u0)[:, ~s.free], u0[:, ~s.free])


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("change, key, words", [
    ({"q": {"uniform": [0.2, 1.0], "scale": 0.005}}, "q", "ellipticity: {normal: 0.2, max: 0.667"),
    ({"phi_ext": {"periodic": 3.14, "scale": 0.05}}, "phi_ext", "shear:"),
    ({"a3": {"normal": [0, 0.01], "scale": 0.002}}, "a3", "multipole3:"),
    ({"multipole5": {"normal": 0.01, "scale": 0.002}}, "multipole5", "unknown entry"),
    ({"elipticity": {"normal": 0.2, "scale": 0.003}}, "elipticity", "did you mean ellipticity"),
    ({"shear": {"normal": 0.05, "max": 0.3}}, "shear", "`scale`"),
    ({"ellipticity": {"normal": -0.2, "scale": 0.003}}, "ellipticity.normal", "must be > 0"),
    ({"ellipticity": {"normal": [0.0, 0.2], "scale": 0.003}}, "ellipticity.normal", "one number"),
    ({"shear": {"normal": 0.05, "disk": 0.3, "scale": 0.003}}, "shear", "exactly one of"),
    ({"shear": {"disk": 0.3, "max": 0.2, "scale": 0.003}}, "shear.max", "truncates the normal prior"),
    ({"multipole4": {"normal": 0.01, "sacle": 0.002}}, "multipole4", "unknown setting"),
    ({"gamma": {"normal": [1.0, -0.2], "scale": 0.01}}, "gamma.normal", "sd > 0"),
    ({"theta_E": {"uniform": [4.0, 0.2], "scale": 0.003}}, "theta_E.uniform", "low < high"),
    ({"theta_E": {"periodic": 3.14, "scale": 0.003}}, "theta_E", "unknown setting"),
])
def test_bad_entries_are_named(change, key, words):
    cfg = {**DEFAULT, **change}
    with pytest.raises(ParameterError) as err:
        space(cfg)
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_missing_entries_are_listed():
    cfg = {k: v for k, v in DEFAULT.items() if k != "shear"}
    with pytest.raises(ParameterError, match=r"missing entries \['shear'\]"):
        space(cfg)


def test_fixed_pairs_hold_the_converted_start():
    cfg = {**DEFAULT, "shear": {"fixed": True}, "multipole3": {"normal": 0.01, "scale": 0.002, "fixed": True}}
    s = space(cfg)
    fixed = [n for n, free in zip(s.coords, s.free.tolist(), strict=True) if not free]
    assert fixed == ["gamma1", "gamma2", "a3_cos", "a3_sin", "shift_0_x", "shift_0_y"]
    assert s.precond(torch.zeros(1, dtype=F64)).shape == (s.dim - 6,)
    u = s.to_sampled(physical())
    moved = s.embed(s.free_part(u) + 0.01, u)
    assert torch.equal(moved[:, ~s.free], u[:, ~s.free])
    # a fixed pair has no prior: a start far outside another pair's prior would be -inf, this one is not
    big = u.clone()
    big[:, s.coords.index("gamma1")] = 5.0
    assert torch.equal(s.log_prior(big), s.log_prior(u))
