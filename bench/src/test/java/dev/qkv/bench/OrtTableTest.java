package dev.qkv.bench;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@link OrtTable} on hand-written JMH CSV files whose best forms and ratios are worked out by hand. */
class OrtTableTest {

    private static final String ORT_HEADER = "\"Benchmark\",\"Mode\",\"Threads\",\"Samples\",\"Score\","
            + "\"Score Error (99.9%)\",\"Unit\",\"Param: causal\",\"Param: graph\",\"Param: shape\",\"Param: spin\","
            + "\"Param: threads\"";
    private static final String QKV_HEADER = "\"Benchmark\",\"Mode\",\"Threads\",\"Samples\",\"Score\","
            + "\"Score Error (99.9%)\",\"Unit\",\"Param: backend\",\"Param: causal\",\"Param: shape\","
            + "\"Param: threads\"";

    @Test
    void picksOrtsFastestFormAndDividesItsTimeByQkvs(@TempDir Path dir) throws IOException {
        Path ort = write(dir, "ort.csv", ORT_HEADER,
                "\"dev.qkv.bench.OrtBench.ort\",\"avgt\",1,3,40.0,1.0,\"us/op\",false,mha,1x1x128x64,true,1",
                // a secondary metric of the gc profiler: not a time, left out
                "\"dev.qkv.bench.OrtBench.ort:gc.alloc.rate\",\"avgt\",1,3,1.0,NaN,\"MB/sec\",false,mha,1x1x128x64,true,1",
                "\"dev.qkv.bench.OrtBench.ort\",\"avgt\",1,3,30.0,1.0,\"us/op\",false,matmul,1x1x128x64,true,1",
                "\"dev.qkv.bench.OrtBench.ort\",\"avgt\",1,3,60000.0,1.0,\"us/op\",false,mha,1x8x2048x64,false,2");
        Path qkv = write(dir, "qkv.csv", QKV_HEADER,
                "\"dev.qkv.bench.SdpaBench.sdpa\",\"avgt\",1,3,15.0,1.0,\"us/op\",java,false,1x1x128x64,1",
                "\"dev.qkv.bench.SdpaBench.sdpa\",\"avgt\",1,3,60.0,1.0,\"us/op\",native,false,1x1x128x64,1",
                "\"dev.qkv.bench.SdpaBench.sdpa\",\"avgt\",1,3,48000.0,1.0,\"us/op\",java,false,1x8x2048x64,2");

        String[] lines = OrtTable.table(OrtTable.read(ort), OrtTable.read(qkv)).split("\n");

        assertEquals(4, lines.length, String.join("\n", lines));
        // tiny, 1 thread: ORT's best is matmul at 30 us; 30 / 15 = 2.00 (java), 30 / 60 = 0.50 (native)
        String tiny = lines[2];
        assertTrue(tiny.startsWith("1x1x128x64"), tiny);
        assertTrue(tiny.contains("30.0 us (matmul)"), tiny);
        assertTrue(tiny.contains("15.0 us") && tiny.contains("2.00"), tiny);
        assertTrue(tiny.contains("60.0 us") && tiny.contains("0.50"), tiny);
        // [1, 8, 2048, 64], 2 threads, ORT parked: 60 ms / 48 ms = 1.25; no native row, so a dash
        String big = lines[3];
        assertTrue(big.contains("60.00 ms (mha, parked)"), big);
        assertTrue(big.contains("48.00 ms") && big.contains("1.25"), big);
        assertTrue(big.contains(" - "), big);
    }

    @Test
    void convertsEveryTimeUnitToMicroseconds(@TempDir Path dir) throws IOException {
        Path f = write(dir, "units.csv", QKV_HEADER,
                "\"b.x\",\"avgt\",1,1,2500.0,0,\"ns/op\",java,false,s,1",
                "\"b.x\",\"avgt\",1,1,2.5,0,\"us/op\",java,false,s,1",
                "\"b.x\",\"avgt\",1,1,0.0025,0,\"ms/op\",java,false,s,1",
                "\"b.x\",\"avgt\",1,1,0.0000025,0,\"s/op\",java,false,s,1");
        for (OrtTable.Row r : OrtTable.read(f)) {
            assertEquals(2.5, r.micros(), 1e-9);
        }
    }

    @Test
    void splitsQuotedFieldsWithCommasAndQuotes() {
        assertEquals(List.of("a", "b,c", "say \"hi\"", ""), OrtTable.fields("a,\"b,c\",\"say \"\"hi\"\"\","));
    }

    @Test
    void refusesAFileThatIsNotJmhCsv(@TempDir Path dir) throws IOException {
        Path f = write(dir, "other.csv", "\"name\",\"value\"", "\"x\",1");
        IOException e = assertThrows(IOException.class, () -> OrtTable.read(f));
        assertFalse(e.getMessage().isEmpty());
    }

    private static Path write(Path dir, String name, String... lines) throws IOException {
        return Files.write(dir.resolve(name), List.of(lines));
    }
}
