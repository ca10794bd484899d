//! The loss against hand computations, the EqCo identities, autograd and
//! finite differences, Theorem 2's bound, and extreme inputs.

use eqco::loss::{
    grad_norm_bound, grad_norm_q, grad_q, info_nce, info_nce_from_similarities, split_diagonal,
    LossConfig, Negatives,
};
use tch::{Kind, Tensor};

const F64: (Kind, tch::Device) = (Kind::Double, tch::Device::Cpu);

fn unit(t: Tensor) -> Tensor {
    let n = t.norm_scalaropt_dim(2, [-1], true);
    t / n
}

/// Normalised random queries `[n, d]`, positives `[n, d]`, shared negatives `[k, d]`.
fn batch(n: i64, k: i64, d: i64, seed: u64) -> (Tensor, Tensor, Tensor) {
    eqco::base::seed::with_torch_seed(seed, || {
        let q = unit(Tensor::randn([n, d], F64));
        // Positives correlated with their queries, as after some training.
        let kp = unit(&q + Tensor::randn([n, d], F64) * 0.5);
        let neg = unit(Tensor::randn([k, d], F64));
        (q, kp, neg)
    })
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Eq. 1 written out in scalars, with the negatives' exp-sum scaled by `scale`.
fn scalar_loss(q: &[f64], k0: &[f64], negs: &[Vec<f64>], tau: f64, m: f64, scale: f64) -> f64 {
    let pos = ((dot(q, k0) - m) / tau).exp();
    let neg: f64 = negs.iter().map(|k| (dot(q, k) / tau).exp()).sum();
    -(pos / (pos + scale * neg)).ln()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let d = t.size()[1] as usize;
    to_vec(t).chunks(d).map(<[f64]>::to_vec).collect()
}

#[test]
fn a_case_by_hand() {
    // q = k0 = e1, one negative e2, τ = 1, m = 0: logits [1, 0], L = ln(1 + e^-1).
    let q = Tensor::from_slice(&[1.0f64, 0.0]).view([1, 2]);
    let neg = Tensor::from_slice(&[0.0f64, 1.0]).view([1, 2]);
    let out = info_nce(&q, &q, Negatives::Shared(&neg), &LossConfig::infonce(1.0)).unwrap();
    let expected = (1.0 + (-1.0f64).exp()).ln();
    assert!((out.loss.double_value(&[]) - expected).abs() < 1e-12);
    assert!((expected - 0.313_261_687_518_222_8).abs() < 1e-15);
    // A margin m = 0.5 at τ = 0.5 gives the same logits [1, 0].
    let cfg = LossConfig {
        margin: Some(0.5),
        ..LossConfig::infonce(0.5)
    };
    let out = info_nce(&q, &q, Negatives::Shared(&neg), &cfg).unwrap();
    assert!((out.loss.double_value(&[]) - expected).abs() < 1e-12);
    // EqCo with α = 2 and K = 1: the negative's exponential counts twice, L = ln(1 + 2e^-1).
    let out = info_nce(&q, &q, Negatives::Shared(&neg), &LossConfig::eqco(1.0, 2.0)).unwrap();
    assert!((out.loss.double_value(&[]) - (1.0 + 2.0 * (-1.0f64).exp()).ln()).abs() < 1e-12);
}

#[test]
fn matches_the_scalar_formula_per_query() {
    let (q, kp, neg) = batch(5, 7, 6, 1);
    let cfg = LossConfig {
        margin: Some(0.3),
        ..LossConfig::infonce(0.2)
    };
    let out = info_nce(&q, &kp, Negatives::Shared(&neg), &cfg).unwrap();
    let (qs, ks, negs) = (rows(&q), rows(&kp), rows(&neg));
    let per = to_vec(&out.per_query);
    for i in 0..5 {
        let want = scalar_loss(&qs[i], &ks[i], &negs, 0.2, 0.3, 1.0);
        assert!(
            (per[i] - want).abs() < 1e-10,
            "query {i}: {} vs {want}",
            per[i]
        );
    }
    let mean = per.iter().sum::<f64>() / 5.0;
    assert!((out.loss.double_value(&[]) - mean).abs() < 1e-12);
}

#[test]
fn alpha_equal_to_k_is_plain_infonce() {
    let (q, kp, neg) = batch(8, 16, 12, 2);
    let plain = info_nce(&q, &kp, Negatives::Shared(&neg), &LossConfig::infonce(0.2)).unwrap();
    let eqco = info_nce(
        &q,
        &kp,
        Negatives::Shared(&neg),
        &LossConfig::eqco(0.2, 16.0),
    )
    .unwrap();
    assert!(plain
        .per_query
        .allclose(&eqco.per_query, 1e-12, 1e-12, false));
    assert!((plain.mi_bound() - eqco.mi_bound()).abs() < 1e-12);
}

#[test]
fn eqco_rescales_the_negatives_exp_sum_by_alpha_over_k() {
    let (q, kp, neg) = batch(6, 16, 10, 3);
    for alpha in [4.0, 256.0, 65536.0] {
        let out = info_nce(
            &q,
            &kp,
            Negatives::Shared(&neg),
            &LossConfig::eqco(0.2, alpha),
        )
        .unwrap();
        let (qs, ks, negs) = (rows(&q), rows(&kp), rows(&neg));
        for (i, got) in to_vec(&out.per_query).into_iter().enumerate() {
            let want = scalar_loss(&qs[i], &ks[i], &negs, 0.2, 0.0, alpha / 16.0);
            assert!(
                (got - want).abs() < 1e-9,
                "α={alpha} query {i}: {got} vs {want}"
            );
        }
        let bound = alpha.ln() - out.loss.double_value(&[]);
        assert!((out.mi_bound() - bound).abs() < 1e-9);
    }
}

#[test]
fn per_query_negatives_equal_shared_ones_when_identical() {
    let (q, kp, neg) = batch(4, 9, 5, 4);
    let cfg = LossConfig::eqco(0.1, 100.0);
    let shared = info_nce(&q, &kp, Negatives::Shared(&neg), &cfg).unwrap();
    let each = neg.unsqueeze(0).expand([4, 9, 5], false).contiguous();
    let per = info_nce(&q, &kp, Negatives::PerQuery(&each), &cfg).unwrap();
    assert!(shared
        .per_query
        .allclose(&per.per_query, 1e-12, 1e-12, false));
}

#[test]
fn autograd_matches_theorem_2_and_finite_differences() {
    let (q, kp, neg) = batch(3, 6, 4, 5);
    let tau = 0.3;
    for cfg in [LossConfig::infonce(tau), LossConfig::eqco(tau, 50.0)] {
        let qv = q.copy().set_requires_grad(true);
        let out = info_nce(&qv, &kp, Negatives::Shared(&neg), &cfg).unwrap();
        // The batch mean divides each query's gradient by N.
        out.loss.backward();
        let autograd = qv.grad() * 3.0;
        let closed = grad_q(&out, &kp, Negatives::Shared(&neg));
        assert!(
            autograd.allclose(&closed, 1e-10, 1e-10, false),
            "{autograd} vs {closed}"
        );
        // Central differences of L_0 with respect to q_0's coordinates.
        let eps = 1e-6;
        let loss0 = |qq: &Tensor| {
            info_nce(qq, &kp, Negatives::Shared(&neg), &cfg)
                .unwrap()
                .per_query
                .double_value(&[0])
        };
        for j in 0..4 {
            let bump = |s: f64| {
                let qq = q.copy();
                let _ = qq.get(0).get(j).g_add_(&Tensor::from(s * eps));
                loss0(&qq)
            };
            let fd = (bump(1.0) - bump(-1.0)) / (2.0 * eps);
            let an = closed.double_value(&[0, j]);
            assert!((fd - an).abs() < 1e-6, "coordinate {j}: fd {fd} vs {an}");
        }
    }
}

#[test]
fn per_query_gradient_works_for_per_query_negatives() {
    let (q, kp, _) = batch(4, 1, 6, 6);
    let negs = unit(eqco::base::seed::with_torch_seed(60, || {
        Tensor::randn([4, 5, 6], F64)
    }));
    let cfg = LossConfig::eqco(0.2, 64.0);
    let qv = q.copy().set_requires_grad(true);
    let out = info_nce(&qv, &kp, Negatives::PerQuery(&negs), &cfg).unwrap();
    out.loss.backward();
    let closed = grad_q(&out, &kp, Negatives::PerQuery(&negs));
    assert!((qv.grad() * 4.0).allclose(&closed, 1e-10, 1e-10, false));
}

#[test]
fn gradient_norm_respects_the_bound() {
    for (seed, tau) in [(7, 0.07), (8, 0.2), (9, 1.0)] {
        let (q, kp, neg) = batch(32, 64, 16, seed);
        for cfg in [LossConfig::infonce(tau), LossConfig::eqco(tau, 4096.0)] {
            let out = info_nce(&q, &kp, Negatives::Shared(&neg), &cfg).unwrap();
            let norm = to_vec(&grad_norm_q(&out, &kp, Negatives::Shared(&neg)));
            let bound = to_vec(&grad_norm_bound(&out));
            for (n, b) in norm.iter().zip(&bound) {
                assert!(*n <= b + 1e-9, "τ={tau}: ‖∂L/∂q‖ = {n} > {b}");
            }
        }
    }
}

#[test]
fn extreme_logits_stay_finite() {
    // τ = 0.01, cosines ±1, K = 65536, in float32 as in training.
    let d = 8;
    let k = 65536;
    let e1 = Tensor::zeros([1, d], (Kind::Float, tch::Device::Cpu));
    let _ = e1.get(0).get(0).fill_(1.0);
    for (pos_sign, neg_sign) in [(1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)] {
        let q = e1.repeat([2, 1]);
        let kp = &q * pos_sign;
        let neg = e1.repeat([k, 1]) * neg_sign;
        for cfg in [
            LossConfig::infonce(0.01),
            LossConfig::eqco(0.01, 16.0),
            LossConfig::eqco(0.01, 1e9),
        ] {
            let qv = q.copy().set_requires_grad(true);
            let out = info_nce(&qv, &kp, Negatives::Shared(&neg), &cfg).unwrap();
            let loss = out.loss.double_value(&[]);
            assert!(loss.is_finite() && loss >= 0.0, "{cfg:?}: {loss}");
            out.loss.backward();
            let g = qv.grad().abs().max().double_value(&[]);
            assert!(g.is_finite(), "{cfg:?}: gradient {g}");
            let norm = grad_norm_q(&out, &kp, Negatives::Shared(&neg));
            assert!(norm.isfinite().all().int64_value(&[]) == 1);
            assert!(out.mi_bound().is_finite());
        }
    }
}

#[test]
fn hard_case_has_the_expected_value() {
    // Positive cosine −1 and K = 65536 negatives at cosine +1, τ = 0.01:
    // L = ln(1 + K·e^{200}) ≈ 200 + ln K.
    let d = 4;
    let k = 65536i64;
    let q = Tensor::zeros([1, d], (Kind::Float, tch::Device::Cpu));
    let _ = q.get(0).get(0).fill_(1.0);
    let neg = q.repeat([k, 1]);
    let out = info_nce(
        &q,
        &-&q,
        Negatives::Shared(&neg),
        &LossConfig::infonce(0.01),
    )
    .unwrap();
    let want = 200.0 + (k as f64).ln();
    assert!((out.loss.double_value(&[]) - want).abs() < 1e-3 * want);
}

#[test]
fn similarities_entry_point_and_diagonal_split() {
    let s = eqco::base::seed::with_torch_seed(11, || Tensor::randn([5, 5], F64));
    let (pos, neg) = split_diagonal(&s).unwrap();
    let sv = rows(&s);
    let nv = rows(&neg);
    for i in 0..5 {
        assert_eq!(pos.double_value(&[i as i64]), sv[i][i]);
        let off: Vec<f64> = (0..5).filter(|&j| j != i).map(|j| sv[i][j]).collect();
        assert_eq!(nv[i], off, "row {i}");
    }
    let out = info_nce_from_similarities(&pos, &neg, &LossConfig::infonce(1.0)).unwrap();
    // Row-wise cross-entropy over the full matrix with target i.
    let ce = s.log_softmax(1, Kind::Double).diagonal(0, 0, 1).neg();
    assert!(out.per_query.allclose(&ce, 1e-12, 1e-12, false));
    assert!(split_diagonal(&Tensor::zeros([2, 3], F64)).is_err());
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let (q, kp, neg) = batch(4, 8, 6, 12);
    let cfg = LossConfig::infonce(0.2);
    let bad_neg = Tensor::zeros([8, 5], F64);
    let e = info_nce(&q, &kp, Negatives::Shared(&bad_neg), &cfg).unwrap_err();
    assert!(e.to_string().contains("negatives"), "{e}");
    let e = info_nce(&q, &kp.narrow(0, 0, 3), Negatives::Shared(&neg), &cfg).unwrap_err();
    assert!(e.to_string().contains("positive keys"), "{e}");
    let per = Tensor::zeros([3, 8, 6], F64);
    assert!(info_nce(&q, &kp, Negatives::PerQuery(&per), &cfg).is_err());
    let e = info_nce(&q, &kp, Negatives::Shared(&neg), &LossConfig::infonce(-1.0)).unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("`tau`"), "{e}");
}
