# Plots of benches/scripts/peers.sh: gnuplot -e "dir='OUT'" benches/scripts/peers.gnuplot
# throughput.png: MB/s per workload and system; latency.png: produce latency percentiles at a
# fixed rate, the same for every system.
set terminal pngcairo size 1100,560 font "sans,10"

set output dir."/throughput.png"
set title "Throughput on one machine, all systems in one run (higher is better)"
set ylabel "MB/s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right
set grid ytics
set xtics scale 0 font ",9"
plot for [i=2:5] dir."/throughput.dat" using i:xtic(1) title columnheader(i)

set output dir."/latency.png"
set title "Produce latency, every system at the same fixed rate (lower is better)"
set style data linespoints
set xlabel "percentile"
set ylabel "ms (log scale)"
set logscale y
set xtics ("p50" 0, "p90" 1, "p99" 2, "p99.9" 3, "max" 4)
set xrange [-0.2:4.2]
set key top left
plot for [i=0:3] dir."/latency.dat" index i using 1:2 with linespoints lw 2 title columnheader(1)
