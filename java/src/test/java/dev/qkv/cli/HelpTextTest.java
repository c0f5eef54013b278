package dev.qkv.cli;

import dev.qkv.attention.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * What {@code qkv <command> --help} says of {@code --backend} matches what the parser takes and what README says
 * ("`sdpa` and `mha` run `native` by default; their `--backend` also takes `auto` and `reference`"): the help of
 * sdpa named reference but not auto, and mha's named neither, nor its default.
 */
class HelpTextTest {

    @ParameterizedTest
    @ValueSource(strings = {"sdpa", "mha"})
    void helpNamesEveryBackendTheParserTakesAndTheDefault(String command) throws UsageException {
        MainTest.Result r = MainTest.run(command, "--help");
        assertEquals(0, r.code(), r.toString());
        for (Backend b : Backend.values()) {
            assertEquals(b, SdpaCommand.backend(b.cliName()), b.cliName()); // the parser sdpa and mha share
            assertTrue(r.out().contains(b.cliName()), command + " --help does not name backend " + b.cliName()
                    + ", which its --backend takes:\n" + r.out());
        }
        assertTrue(r.out().contains("Default backend native"), command + " --help does not give the default:\n"
                + r.out());
    }

    /**
     * bench's --shape takes spaces around its items and a leading '+' (the integer parser of every flag strips and
     * takes a sign): " 1, 2 ,+3,4 " is [1, 2, 3, 4]. Kept, as harmless, but --help said nothing of the syntax; now
     * it says what an item is, and the parser does what it says.
     */
    @org.junit.jupiter.api.Test
    void benchHelpSaysWhatAShapeItemIsAndTheParserAgrees() throws UsageException {
        MainTest.Result r = MainTest.run("bench", "--help");
        assertEquals(0, r.code(), r.toString());
        assertTrue(r.out().contains("B,H,L,D: four positive decimal integers separated by commas (spaces around"
                + " them are ignored)"), r.out());
        org.junit.jupiter.api.Assertions.assertArrayEquals(new long[] {1, 2, 3, 4}, BenchCommand.shape(" 1, 2 ,+3,4 "));
        org.junit.jupiter.api.Assertions.assertArrayEquals(new long[] {7, 1, 2147483647, 8},
                BenchCommand.shape("007,1,2147483647,8"));
    }

    /**
     * PyTorch has two boolean mask conventions: {@code F.scaled_dot_product_attention}'s attn_mask is true where a
     * query may attend (qkv's), {@code nn.MultiheadAttention}'s attn_mask and key_padding_mask are true where it
     * may not. mha's help said "the opposite of torch's attn_mask", which reads as SDPA's too: a port from SDPA
     * that followed it would invert a correct mask. It must name the module whose convention is the opposite and
     * the function whose convention is the same, and say the layout is batch first (nn.MultiheadAttention's
     * default, batch_first=False, takes [L, B, E]: same shape rank, silently wrong).
     */
    @org.junit.jupiter.api.Test
    void mhaHelpNamesWhichTorchMaskConventionItFollows() {
        MainTest.Result r = MainTest.run("mha", "--help");
        assertEquals(0, r.code(), r.toString());
        String help = r.out().replaceAll("\\s+", " ");
        assertTrue(help.contains("nn.MultiheadAttention's attn_mask and key_padding_mask"), help);
        assertTrue(help.contains("as F.scaled_dot_product_attention's attn_mask"), help);
        assertTrue(help.contains("batch_first"), help);
    }
}
