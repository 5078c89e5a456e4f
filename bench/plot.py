"""Draws the latency CDFs of a sandpool benchmark run.

Usage: python3 bench/plot.py bench-results/results.json bench-results/
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cdf(ax, samples, label, **kw):
    xs = sorted(samples)
    if not xs:
        return
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label, **kw)


def main(results_path, out_dir):
    r = json.load(open(results_path))
    c = r["conditions"]
    subtitle = f'{c["machine"]}, Docker {c["docker"]}, image {c["image"]}, {c["build"]} build'
    cold = r["cold_baseline_ms"]["samples"]

    for key, title, name in [
        ("handout", "Handout: connect → `session` (warm pool)", "handout-cdf.png"),
        ("first_exec", "Time to first exec: connect → ack of `exec true`", "first-exec-cdf.png"),
    ]:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for conc in ["c1", "c20", "c100"]:
            h = r["handout"][conc]
            cdf(ax, h[key]["samples"], f'{h["concurrency"]} concurrent (n={h[key]["n"]})')
        cdf(ax, cold, f"cold create+start+exec (n={len(cold)})", color="black", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of sessions")
        ax.set_title(f"{title}\n{subtitle}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(f"{out_dir}/{name}", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rec = r["recycle_ms"]
    cdf(ax, rec["samples"], f'release → idle, scrubbed and verified (n={rec["n"]})')
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("fraction of releases")
    ax.set_title(f"Recycle time\n{subtitle}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(f"{out_dir}/recycle-cdf.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rtt = r["command_rtt_engine_ms"]
    cdf(ax, rtt["supervisor"]["samples"], f'supervisor, in process (n={rtt["supervisor"]["n"]})')
    sock = r["command_rtt_socket_ms"]["rtt"]
    cdf(ax, sock["samples"], f'supervisor, client-observed over socket.io (n={sock["n"]})')
    cdf(ax, rtt["docker_exec"]["samples"], f'docker exec baseline (n={rtt["docker_exec"]["n"]})',
        color="black", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_ylabel("fraction of commands")
    ax.set_title(f"Command round trip: `true` in a live sandbox\n{subtitle}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(f"{out_dir}/command-rtt-cdf.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
