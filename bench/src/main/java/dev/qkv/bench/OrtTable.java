package dev.qkv.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;

/**
 * The last step of {@code make bench-ort}: joins JMH's CSV results of {@link OrtBench} and {@link SdpaBench} (the
 * same shapes, causal flags and thread counts) into one table of ORT's fastest form against each qkv backend.
 * The ratio is ORT's time over qkv's, so above 1 means qkv is faster. ORT's best is taken over every form (and
 * spin setting, marked "parked" when its workers did not spin) that the run measured.
 *
 * <p>Usage: {@code OrtTable ort.csv qkv.csv} (files written by JMH's {@code -rf csv -rff FILE}).
 */
public final class OrtTable {
    private OrtTable() {
    }

    /** One measured row: its parameters and its score in microseconds. */
    record Row(Map<String, String> params, double micros) {
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 2) {
            System.err.println("usage: OrtTable ORT_CSV QKV_CSV (JMH -rf csv results of OrtBench and SdpaBench)");
            System.exit(2);
        }
        System.out.print(table(read(Path.of(args[0])), read(Path.of(args[1]))));
        // the CSV files do not say which OpenBLAS kernels ran; this JVM runs in the same environment as the
        // benchmarks' forks (whose @Setup lines above print it too), so it loads the same library and core
        System.out.println(BenchSupport.core() + " (qkv's native rows; ORT runs its own MLAS kernels) jdk="
                + BenchSupport.jdk());
    }

    /** The joined table as text, one line per (shape, causal, threads) that both files measured. */
    static String table(List<Row> ort, List<Row> qkv) {
        // key: shape, causal, threads; ORT's best form and qkv's time per backend
        Map<String, Row> bestOrt = new TreeMap<>();
        for (Row r : ort) {
            String key = key(r);
            Row best = bestOrt.get(key);
            if (best == null || r.micros() < best.micros()) {
                bestOrt.put(key, r);
            }
        }
        Map<String, Map<String, Double>> ours = new TreeMap<>();
        List<String> backends = new ArrayList<>();
        for (Row r : qkv) {
            String backend = r.params().getOrDefault("backend", "?");
            if (!backends.contains(backend)) {
                backends.add(backend);
            }
            ours.computeIfAbsent(key(r), x -> new LinkedHashMap<>()).put(backend, r.micros());
        }
        StringBuilder out = new StringBuilder();
        out.append("qkv against ONNX Runtime's fastest form, measured in the same run; ratio = ORT time / qkv time"
                + " (above 1: qkv faster)\n");
        out.append(String.format(Locale.ROOT, "%-16s %-6s %-7s %-24s", "shape", "causal", "threads",
                "ORT best (form)"));
        for (String b : backends) {
            out.append(String.format(Locale.ROOT, " %14s %8s", "qkv " + b, "ratio"));
        }
        out.append('\n');
        for (Map.Entry<String, Row> e : bestOrt.entrySet()) {
            Map<String, Double> mine = ours.get(e.getKey());
            if (mine == null) {
                continue;
            }
            Row o = e.getValue();
            out.append(String.format(Locale.ROOT, "%-16s %-6s %-7s %-24s", o.params().get("shape"),
                    o.params().get("causal"), o.params().get("threads"),
                    time(o.micros()) + " (" + o.params().getOrDefault("graph", "?")
                            + ("false".equals(o.params().get("spin")) ? ", parked" : "") + ")"));
            for (String b : backends) {
                Double t = mine.get(b);
                out.append(t == null ? String.format(Locale.ROOT, " %14s %8s", "-", "-")
                        : String.format(Locale.ROOT, " %14s %8.2f", time(t), o.micros() / t));
            }
            out.append('\n');
        }
        return out.toString();
    }

    private static String key(Row r) {
        Map<String, String> p = r.params();
        return p.get("shape") + " " + p.get("causal") + " " + String.format("%3s", p.get("threads"));
    }

    private static String time(double micros) {
        return micros >= 1000 ? String.format(Locale.ROOT, "%.2f ms", micros / 1000)
                : String.format(Locale.ROOT, "%.1f us", micros);
    }

    /** The primary results of a JMH CSV file (secondary metrics such as {@code :gc.alloc.rate} are left out). */
    static List<Row> read(Path csv) throws IOException {
        List<String> lines = Files.readAllLines(csv);
        if (lines.isEmpty()) {
            throw new IOException(csv + " is empty");
        }
        List<String> header = fields(lines.get(0));
        int benchmark = header.indexOf("Benchmark");
        int score = header.indexOf("Score");
        int unit = header.indexOf("Unit");
        if (benchmark < 0 || score < 0 || unit < 0) {
            throw new IOException(csv + " is not a JMH CSV result file (header " + header + ")");
        }
        List<Row> rows = new ArrayList<>();
        for (String line : lines.subList(1, lines.size())) {
            if (line.isBlank()) {
                continue;
            }
            List<String> f = fields(line);
            if (f.get(benchmark).contains(":")) {
                continue;
            }
            Map<String, String> params = new LinkedHashMap<>();
            for (int i = 0; i < header.size(); i++) {
                if (header.get(i).startsWith("Param: ")) {
                    params.put(header.get(i).substring("Param: ".length()), f.get(i));
                }
            }
            rows.add(new Row(params, micros(Double.parseDouble(f.get(score)), f.get(unit))));
        }
        return rows;
    }

    private static double micros(double value, String unit) {
        return switch (unit) {
            case "ns/op" -> value / 1000;
            case "us/op" -> value;
            case "ms/op" -> value * 1000;
            case "s/op" -> value * 1e6;
            default -> throw new IllegalArgumentException("unit " + unit + " is not a time per operation");
        };
    }

    /** The fields of one CSV line: comma-separated, optionally double-quoted with {@code ""} for a quote. */
    static List<String> fields(String line) {
        List<String> out = new ArrayList<>();
        StringBuilder f = new StringBuilder();
        boolean quoted = false;
        for (int i = 0; i < line.length(); i++) {
            char c = line.charAt(i);
            if (quoted) {
                if (c == '"' && i + 1 < line.length() && line.charAt(i + 1) == '"') {
                    f.append('"');
                    i++;
                } else if (c == '"') {
                    quoted = false;
                } else {
                    f.append(c);
                }
            } else if (c == '"') {
                quoted = true;
            } else if (c == ',') {
                out.add(f.toString());
                f.setLength(0);
            } else {
                f.append(c);
            }
        }
        out.add(f.toString());
        return out;
    }
}
