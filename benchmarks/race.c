/* The shared-counter race from the discussion divergefork answers, as the physical reference
 * for benchmarks/bench_race.py (which compiles it at benchmark time with -O0; never commit the
 * binary).
 *
 * Parent and child share one uint64_t through a MAP_SHARED | MAP_ANONYMOUS mapping and each
 * increments it N times, starting together on a flag. `volatile` keeps one load, add and store
 * per increment at any -O level (at -O2 without it the loop becomes a single add and nothing
 * is lost). With PROCS=1 only the parent counts: the single-process rate.
 *
 *     cc -O0 -o race race.c && ./race 50000000 [PROCS]
 *
 * stderr: the original log. stdout: the result, then a line the benchmark parses:
 *     increments_per_second_per_process = <parent rate> <child rate>
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
    volatile uint64_t counter;
    char pad1[120]; /* the flags live on other cache lines than the counter */
    volatile int start;
    volatile int ready;
    char pad2[120];
    volatile double child_seconds;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double count(struct shared *sh, uint64_t n) {
    while (!sh->start)
        sched_yield();
    double started = now();
    for (uint64_t i = 0; i < n; i++)
        sh->counter++;
    double seconds = now() - started;
    fprintf(stderr, "[pid %d] Done.\n", (int)getpid());
    return seconds;
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 50000000ULL;
    int procs = argc > 2 ? atoi(argv[2]) : 2;
    if (n == 0 || (procs != 1 && procs != 2)) {
        fprintf(stderr, "usage: %s [N > 0] [PROCS 1|2]\n", argv[0]);
        return 2;
    }
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    pid_t child = -1;
    if (procs == 2) {
        child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            sh->ready = 1;
            sh->child_seconds = count(sh, n);
            _exit(0);
        }
        while (!sh->ready)
            sched_yield();
    }
    sh->start = 1;
    double parent_seconds = count(sh, n);
    int status = 0;
    if (procs == 2) {
        fprintf(stderr, "[pid %d] Waiting for child %d to end...\n", (int)getpid(), (int)child);
        if (waitpid(child, &status, 0) < 0) {
            perror("waitpid");
            return 1;
        }
        fprintf(stderr, "[pid %d] Child %d exited with status %d\n", (int)getpid(), (int)child, WEXITSTATUS(status));
    }
    printf("shared_int = %" PRIu64 " (expected %" PRIu64 ").\n", sh->counter, n * (uint64_t)procs);
    printf("increments_per_second_per_process = %.0f", (double)n / parent_seconds);
    if (procs == 2)
        printf(" %.0f", (double)n / sh->child_seconds);
    printf("\n");
    return 0;
}
