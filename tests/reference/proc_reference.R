# Reference values for tests/test_stats.py (provenance; CI does not need R).
# Run: Rscript tests/reference/proc_reference.R   (R 4.2.2, pROC 1.18.0 from Debian bookworm)
# Convention: levels = c(0, 1) (0 = control/low grade, 1 = case/high grade), direction = "<"
# (higher score = high grade; never auto-flipped).
suppressMessages(library(pROC))
cat("# R", R.version$major, R.version$minor, " pROC", as.character(packageVersion("pROC")), "\n")
out <- function(name, x) cat(sprintf("%s = %s\n", name, paste(sprintf("%.17g", x), collapse = ", ")))
mk <- function(y, s) roc(y, s, levels = c(0, 1), direction = "<", quiet = TRUE)
ref_auc <- function(tag, y, s) {
  r <- mk(y, s)
  ci <- ci.auc(r, method = "delong", conf.level = 0.95)
  out(paste0(tag, "_auc_ci"), c(as.numeric(ci[2]), as.numeric(ci[1]), as.numeric(ci[3])))
}
ref_test <- function(tag, y, a, b) {
  t <- suppressWarnings(roc.test(mk(y, a), mk(y, b), method = "delong", paired = TRUE))
  out(paste0(tag, "_delong_zp"), c(as.numeric(t$statistic), t$p.value))
}

# 1. small, no ties (n = 12)
y_small <- c(0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1)
a_small <- c(0.10, 0.35, 0.22, 0.61, 0.05, 0.48, 0.72, 0.40, 0.91, 0.55, 0.83, 0.67)
b_small <- c(0.30, 0.12, 0.58, 0.44, 0.26, 0.70, 0.62, 0.33, 0.75, 0.81, 0.52, 0.39)
ref_auc("small_a", y_small, a_small)
ref_auc("small_b", y_small, b_small)
ref_test("small", y_small, a_small, b_small)

# 2. ties within and across classes (n = 20, scores on a 0.1 grid)
y_ties <- c(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
a_ties <- c(0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.5, 0.5, 0.7, 0.2, 0.3, 0.5, 0.5, 0.7, 0.7, 0.8, 0.8, 0.9, 0.2, 0.5)
b_ties <- c(0.2, 0.2, 0.4, 0.4, 0.4, 0.6, 0.6, 0.1, 0.8, 0.4, 0.4, 0.6, 0.6, 0.6, 0.8, 0.8, 0.4, 0.9, 0.9, 0.2)
ref_auc("ties_a", y_ties, a_ties)
ref_auc("ties_b", y_ties, b_ties)
ref_test("ties", y_ties, a_ties, b_ties)

# 3. perfect separation (a), imperfect (b), and a second perfect model (c)
y_perf <- c(0, 0, 0, 0, 0, 1, 1, 1, 1, 1)
a_perf <- c(0.05, 0.10, 0.20, 0.30, 0.40, 0.60, 0.70, 0.80, 0.90, 0.95)
b_perf <- c(0.05, 0.65, 0.20, 0.30, 0.40, 0.60, 0.35, 0.80, 0.90, 0.95)
c_perf <- c(0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)
ref_auc("perf_a", y_perf, a_perf)
ref_auc("perf_b", y_perf, b_perf)
ref_test("perf_ab", y_perf, a_perf, b_perf)
ref_test("perf_ac", y_perf, a_perf, c_perf)

# 4. worse than chance with direction "<" (no flipping)
y_inv <- c(0, 0, 0, 0, 1, 1, 1, 1)
s_inv <- c(0.9, 0.8, 0.3, 0.6, 0.2, 0.4, 0.1, 0.7)
ref_auc("inv", y_inv, s_inv)

# 5. realistic 92-patient test set (41 high / 51 low), two models
y92 <- c(1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0)
a92 <- c(0.9278, 0.059, 0.6103, 0.5066, 0.4835, 0.8847, 0.64, 0.6023, 0.6913, 0.3042, 0.2073, 0.6271, 0.2042, 0.9, 0.5249, 0.2312, 0.9166, 0.7, 0.4156, 0.4726, 0.061, 0.8333, 0.533, 0.9459, 0.6411, 0.776, 0.5581, 0.1596, 0.4175, 0.1304, 0.836, 0.3522, 0.0664, 0.6654, 0.6237, 0.2688, 0.0286, 0.1113, 0.9441, 0.2683, 0.4848, 0.8477, 0.6831, 0.8566, 0.207, 0.7123, 0.3092, 0.3429, 0.3057, 0.5132, 0.5125, 0.5383, 0.4881, 0.0607, 0.7065, 0.4633, 0.2868, 0.1995, 0.8678, 0.6867, 0.3714, 0.6375, 0.4982, 0.1741, 0.3241, 0.9243, 0.4499, 0.4603, 0.1719, 0.0344, 0.2371, 0.4435, 0.2835, 0.0685, 0.2221, 0.3136, 0.8456, 0.8983, 0.2179, 0.0595, 0.3079, 0.5256, 0.0597, 0.897, 0.0587, 0.4757, 0.476, 0.7983, 0.8364, 0.8414, 0.6116, 0.4309)
b92 <- c(0.5781, 0.0281, 0.4105, 0.5693, 0.6117, 0.8361, 0.6908, 0.4069, 0.7613, 0.1771, 0.1076, 0.5719, 0.152, 0.5801, 0.4188, 0.379, 0.7977, 0.3786, 0.3858, 0.6776, 0.0708, 0.8093, 0.3154, 0.8355, 0.7393, 0.6539, 0.5512, 0.2217, 0.4063, 0.3813, 0.9168, 0.2168, 0.0749, 0.7044, 0.9503, 0.4266, 0.2932, 0.0703, 0.8477, 0.6608, 0.8128, 0.7848, 0.7019, 0.8197, 0.4575, 0.7151, 0.3917, 0.56, 0.9084, 0.3737, 0.3599, 0.4725, 0.4411, 0.098, 0.2588, 0.5322, 0.2215, 0.0785, 0.576, 0.3364, 0.1669, 0.4436, 0.6764, 0.3013, 0.2774, 0.9485, 0.4026, 0.4314, 0.1394, 0.0847, 0.3894, 0.1736, 0.2045, 0.4974, 0.1996, 0.3963, 0.745, 0.8178, 0.2414, 0.0828, 0.3685, 0.5957, 0.2466, 0.969, 0.1075, 0.7351, 0.8123, 0.7726, 0.5662, 0.7925, 0.3263, 0.3772)
ref_auc("p92_a", y92, a92)
ref_auc("p92_b", y92, b92)
ref_test("p92", y92, a92, b92)
r <- mk(y92, a92); ci90 <- ci.auc(r, method = "delong", conf.level = 0.90)
out("p92_a_auc_ci90", c(as.numeric(ci90[2]), as.numeric(ci90[1]), as.numeric(ci90[3])))

# 6. McNemar: paired correctness of two models on 92 patients (threshold 0.5)
ca <- (a92 >= 0.5) == (y92 == 1)
cb <- (b92 >= 0.5) == (y92 == 1)
tab <- table(factor(ca, levels = c(TRUE, FALSE)), factor(cb, levels = c(TRUE, FALSE)))
out("mcnemar_table_b_c", c(tab[1, 2], tab[2, 1]))
out("mcnemar_chisq_corrected", c(as.numeric(mcnemar.test(tab, correct = TRUE)$statistic), mcnemar.test(tab, correct = TRUE)$p.value))
out("mcnemar_chisq_uncorrected", c(as.numeric(mcnemar.test(tab, correct = FALSE)$statistic), mcnemar.test(tab, correct = FALSE)$p.value))
out("mcnemar_exact_binom", binom.test(tab[1, 2], tab[1, 2] + tab[2, 1], 0.5)$p.value)

# 7. binomial CIs: sensitivity of model a at 0.5 (Wilson = prop.test without correction; exact = binom.test)
tp <- sum(a92 >= 0.5 & y92 == 1); np <- sum(y92 == 1)
out("sens_a_tp_n", c(tp, np))
out("sens_a_wilson", prop.test(tp, np, correct = FALSE)$conf.int)
out("sens_a_exact", binom.test(tp, np)$conf.int)

# 8. Table 1 tests
out("ttest_equalvar_a92_by_y", c(as.numeric(t.test(a92[y92 == 1], a92[y92 == 0], var.equal = TRUE)$statistic),
                                  t.test(a92[y92 == 1], a92[y92 == 0], var.equal = TRUE)$p.value))
out("wilcox_asymp_nocorrect_p", wilcox.test(a92[y92 == 1], a92[y92 == 0], exact = FALSE, correct = FALSE)$p.value)
sex <- matrix(c(139, 75, 53, 39), nrow = 2)  # paper Table 1: sex by set
cs <- chisq.test(sex, correct = FALSE)
out("paper_sex_chisq", c(as.numeric(cs$statistic), cs$p.value))
small_tab <- matrix(c(3, 1, 1, 3), nrow = 2)
out("fisher_small_p", fisher.test(small_tab)$p.value)
